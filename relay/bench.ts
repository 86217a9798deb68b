/** Relay benchmark (`npm run bench:relay`): ratios measured in one run against the emulator and a private Redis.
 *   1. events/s and acknowledgement latency p50/p99 for 1 and 2 instances (emulator without rate limit);
 *   2. CPU per event, 2 instances vs 1 (sharing Redis should cost nothing measurable);
 *   3. CPU per event, relay vs calling onEvent in-process (the same plugin, cache on the same Redis);
 *   4. draining a 10,000-event backlog: share of Intercom's rate limit used.
 * Options: --events N (per load phase, default 4000), --backlog N (default 10000), --concurrency N (default 32),
 * --rate N (events/s per instance in the CPU-cost phases, default 200).
 */
import { readFileSync } from 'node:fs'
import { Agent } from 'node:http'
import { parseArgs } from 'node:util'
import Redis from 'ioredis'
import { startEmulator, Emulator } from '../tools/intercom/emulator'
import { startRedis } from '../tools/lib/redis-server'
import { Global, onEvent, PluginMeta, setupPlugin } from '../index'
import { redisCache } from './cache'
import { intercomFetch } from './fetch'
import { postJson, relayEnv, RelayProcess, spawnRelay, TEST_TOKEN, waitFor, webhookItem } from './harness'
import { toPluginEvent, WebhookItem } from './payload'

const PEOPLE = 500
const PREFIX = 'bench:'
/** Intercom's limit: 10,000 calls a minute, enforced as about 1,666 per 10-second window. */
const INTERCOM_LIMIT = { rateLimit: 1666, windowSeconds: 10 }
const CLOCK_TICKS_PER_SECOND = 100
const BASE_SECONDS = Date.parse('2025-01-01T00:00:00Z') / 1000

const email = (person: number) => `person${person}@customer${person % 50}.example`

/** Event i of a phase: person i mod PEOPLE, its own created_at so that no two events are deduplicated. */
export function benchEvent(phase: number, i: number): WebhookItem {
    const person = i % PEOPLE
    return webhookItem({
        uuid: `${phase}-${i}`,
        email: email(person),
        distinctId: `user-${person}`,
        properties: { plan: 'team' },
        timestamp: new Date((BASE_SECONDS + phase * 1_000_000 + i) * 1000).toISOString(),
    })
}

export function percentile(sorted: number[], p: number): number {
    if (sorted.length === 0) return NaN
    return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

/** CPU seconds (user + system) a process has used so far, from /proc (Linux). */
function cpuSecondsOf(pid: number): number {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND
}

interface LoadResult {
    events: number
    seconds: number
    latenciesMs: number[]
    cpuSeconds: number
}

/**
 * Sends `count` single-event webhooks, at most `concurrency` at a time over kept-alive connections, round-robin;
 * as fast as they are answered, or paced at `perSecond` (the same load per instance, to compare CPU costs).
 */
async function load(
    urls: string[],
    pids: number[],
    phase: number,
    count: number,
    { concurrency, perSecond }: { concurrency: number; perSecond?: number }
) {
    const agent = new Agent({ keepAlive: true, maxSockets: concurrency })
    const latenciesMs: number[] = []
    const cpuBefore = pids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0)
    const started = process.hrtime.bigint()
    let next = 0
    const worker = async () => {
        while (next < count) {
            const i = next++
            if (perSecond) {
                const due = Number(started) / 1e6 + (i * 1000) / perSecond
                const wait = due - Number(process.hrtime.bigint()) / 1e6
                if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
            }
            const t0 = process.hrtime.bigint()
            const res = await postJson(`${urls[i % urls.length]}/events`, benchEvent(phase, i), {
                agent,
            })
            if (res.status !== 200)
                throw new Error(`event ${i}: HTTP ${res.status} ${JSON.stringify(res.body)}`)
            latenciesMs.push(Number(process.hrtime.bigint() - t0) / 1e6)
        }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    const cpuSeconds = pids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0) - cpuBefore
    agent.destroy()
    latenciesMs.sort((a, b) => a - b)
    return { events: count, seconds, latenciesMs, cpuSeconds } satisfies LoadResult
}

/** The baseline: this file run as a child that calls onEvent directly, and prints its CPU time as JSON. */
async function inProcessWorker(emulatorUrl: string, redisUrl: string, count: number, concurrency: number) {
    const client = new Redis(redisUrl)
    const meta: PluginMeta = {
        config: { intercomApiKey: TEST_TOKEN, triggeringEvents: 'signed_in' },
        global: {} as Global,
        cache: redisCache(client, `${PREFIX}cache:`),
        fetch: intercomFetch({ override: emulatorUrl, onCall: () => undefined }),
        logger: {
            log: () => undefined,
            info: () => undefined,
            warn: () => undefined,
            error: () => undefined,
            debug: () => undefined,
        },
    }
    await setupPlugin(meta)
    const run = async (phase: number, n: number) => {
        let next = 0
        const worker = async () => {
            while (next < n) {
                const item = benchEvent(phase, next++)
                const outcome = await onEvent(toPluginEvent(item), { ...meta, person: item.person })
                if (outcome.status !== 'delivered')
                    throw new Error(`in-process: ${outcome.status} ${outcome.reason}`)
            }
        }
        await Promise.all(Array.from({ length: concurrency }, worker))
    }
    await run(8, Math.min(count, 500)) // warm-up, like the relay's
    const before = process.cpuUsage()
    const started = process.hrtime.bigint()
    await run(9, count)
    const used = process.cpuUsage(before)
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    process.stdout.write(JSON.stringify({ cpuSeconds: (used.user + used.system) / 1e6, seconds }) + '\n')
    client.disconnect()
    ;(meta.fetch as ReturnType<typeof intercomFetch>).destroy()
}

async function inProcessBaseline(emulatorUrl: string, redisUrl: string, count: number, concurrency: number) {
    const { spawn } = await import('node:child_process')
    const child = spawn(
        process.execPath,
        [
            '--import',
            'tsx',
            __filename,
            '--worker',
            emulatorUrl,
            redisUrl,
            String(count),
            String(concurrency),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] }
    )
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')))
    await new Promise((resolve) => child.once('exit', resolve))
    return JSON.parse(out.trim().split('\n').pop()!) as { cpuSeconds: number; seconds: number }
}

/** Fills the retry queue through the relay (Intercom failing), then times a fresh instance draining it. */
async function drainBacklog(emulator: Emulator, env: Record<string, string>, backlog: number, redis: Redis) {
    emulator.configure({ errorRate: 1 })
    const filler = await spawnRelay({ ...env, RELAY_DRAIN_INTERVAL_MS: '3600000' })
    const agent = new Agent({ keepAlive: true, maxSockets: 32 })
    let next = 0
    const fill = async () => {
        while (next < backlog) {
            const i = next++
            const res = await postJson(`${filler.url}/events`, benchEvent(3, i), { agent })
            if (res.status !== 200)
                throw new Error(`fill ${i}: HTTP ${res.status} ${JSON.stringify(res.body)}`)
        }
    }
    await Promise.all(Array.from({ length: 32 }, fill))
    agent.destroy()
    filler.child.kill('SIGTERM')
    await filler.exited
    const queued = await redis.llen(`${PREFIX}cache:intercom:retry-queue`)

    emulator.configure({ errorRate: 0, ...INTERCOM_LIMIT })
    emulator.reset()
    const drainer = await spawnRelay({ ...env, RELAY_DRAIN_INTERVAL_MS: '1000' })
    const started = Date.now()
    await waitFor(
        async () => (await redis.llen(`${PREFIX}cache:intercom:retry-queue`)) === 0,
        20 * 60_000,
        'the backlog to drain'
    )
    const seconds = (Date.now() - started) / 1000
    await stop(drainer)
    const stats = emulator.stats()
    return {
        queued,
        seconds,
        calls: stats.calls,
        rateLimited: stats.rateLimited,
        delivered: stats.eventsAccepted,
        fullWindowUse: fullWindowUse(emulator),
    }
}

/**
 * Share of the limit used in the windows the drain spanned from start to end: the emulator's windows are
 * aligned on the clock like Intercom's, so the first (joined late) and the last (backlog ran out) are left out.
 */
function fullWindowUse(emulator: Emulator): { windows: number; share: number } {
    const windowMs = INTERCOM_LIMIT.windowSeconds * 1000
    const perWindow = new Map<number, number>()
    for (const request of emulator.requests()) {
        if (request.status < 200 || request.status >= 300) continue
        const window = Math.floor(request.at / windowMs)
        perWindow.set(window, (perWindow.get(window) ?? 0) + 1)
    }
    const windows = [...perWindow.keys()].sort((a, b) => a - b).slice(1, -1)
    const accepted = windows.reduce((sum, window) => sum + perWindow.get(window)!, 0)
    return { windows: windows.length, share: accepted / (windows.length * INTERCOM_LIMIT.rateLimit) }
}

async function stop(instance: RelayProcess): Promise<void> {
    instance.child.kill('SIGTERM')
    await instance.exited
}

function describeLoad(label: string, result: LoadResult): string {
    const p = (q: number) => percentile(result.latenciesMs, q).toFixed(1)
    return `${label}: ${(result.events / result.seconds).toFixed(0)} events/s, ack p50 ${p(50)} ms, p99 ${p(99)} ms, CPU ${((result.cpuSeconds / result.events) * 1000).toFixed(3)} ms/event`
}

async function main(): Promise<void> {
    const { values } = parseArgs({
        options: {
            events: { type: 'string', default: '4000' },
            backlog: { type: 'string', default: '10000' },
            concurrency: { type: 'string', default: '32' },
            rate: { type: 'string', default: '200' },
        },
    })
    const events = Number(values.events)
    const backlog = Number(values.backlog)
    const concurrency = Number(values.concurrency)
    const rate = Number(values.rate)
    const redisServer = await startRedis()
    const redis = new Redis(redisServer.url)
    const emulator = await startEmulator({
        rateLimit: 1_000_000_000,
        contacts: Array.from({ length: PEOPLE }, (_, person) => ({
            email: email(person),
            role: person % 10 === 9 ? ('lead' as const) : ('user' as const),
        })),
    })
    const env = relayEnv({
        emulatorUrl: emulator.url,
        redisUrl: redisServer.url,
        extra: { REDIS_PREFIX: PREFIX, triggeringEvents: 'signed_in', LOG_LEVEL: 'info' },
    })
    const instances: RelayProcess[] = []
    try {
        console.log(
            `Relay bench: ${events} events per phase, ${PEOPLE} people, concurrency ${concurrency}; emulator without rate limit`
        )
        instances.push(await spawnRelay(env), await spawnRelay(env))
        const [a, b] = instances
        // Warm-up of both: the shared contact cache, and each instance's JIT.
        for (const [n, instance] of instances.entries()) {
            await load([instance.url], [instance.pid], 10 + n, events, { concurrency })
        }
        const one = await load([a.url], [a.pid], 1, events, { concurrency })
        console.log(describeLoad('1 instance,  as fast as answered', one))
        const two = await load([a.url, b.url], [a.pid, b.pid], 2, events, { concurrency: 2 * concurrency })
        console.log(describeLoad('2 instances, as fast as answered', two))
        // CPU cost of scale-out: the same load on each instance, so that only the sharing of Redis differs.
        const oneCost = await load([a.url], [a.pid], 5, events, { concurrency, perSecond: rate })
        console.log(describeLoad(`1 instance,  paced at ${rate}/s`, oneCost))
        const twoCost = await load([a.url, b.url], [a.pid, b.pid], 6, 2 * events, {
            concurrency: 2 * concurrency,
            perSecond: 2 * rate,
        })
        console.log(describeLoad(`2 instances, paced at ${2 * rate}/s`, twoCost))
        await Promise.all(instances.splice(0).map(stop))

        const baseline = await inProcessBaseline(emulator.url, redisServer.url, events, concurrency)
        const perEvent = (r: { cpuSeconds: number }, n: number) => (r.cpuSeconds / n) * 1000
        console.log(
            `onEvent in-process: ${(events / baseline.seconds).toFixed(0)} events/s, CPU ${perEvent(baseline, events).toFixed(3)} ms/event`
        )

        const drained = await drainBacklog(emulator, env, backlog, redis)
        const limitPerSecond = INTERCOM_LIMIT.rateLimit / INTERCOM_LIMIT.windowSeconds
        console.log(
            `Backlog: ${drained.queued} queued, drained in ${drained.seconds.toFixed(1)} s (${(drained.delivered / drained.seconds).toFixed(1)} events/s), ${drained.calls} Intercom calls, ${drained.rateLimited} answered 429`
        )
        console.log('\nRatios (one run):')
        console.log(
            `  events/s, 2 instances / 1:          ${(two.events / two.seconds / (one.events / one.seconds)).toFixed(2)}`
        )
        console.log(
            `  ack p99, 2 instances / 1:           ${(percentile(two.latenciesMs, 99) / percentile(one.latenciesMs, 99)).toFixed(2)}`
        )
        console.log(
            `  CPU/event, 2 instances / 1, same load per instance: ${(perEvent(twoCost, 2 * events) / perEvent(oneCost, events)).toFixed(2)}`
        )
        console.log(
            `  CPU/event, 2 instances / 1, flat out: ${(perEvent(two, events) / perEvent(one, events)).toFixed(2)}`
        )
        console.log(
            `  CPU/event, relay / onEvent alone, flat out: ${(perEvent(one, events) / perEvent(baseline, events)).toFixed(2)}`
        )
        console.log(
            `  Intercom's limit used by the drain: ${(drained.fullWindowUse.share * 100).toFixed(1)}% over ${drained.fullWindowUse.windows} full windows; events/s over the whole drain / calls/s allowed: ${(drained.delivered / drained.seconds / limitPerSecond).toFixed(2)}`
        )
    } finally {
        await Promise.all(instances.map(stop))
        redis.disconnect()
        await emulator.close()
        await redisServer.stop()
    }
}

if (require.main === module) {
    const argv = process.argv.slice(2)
    if (argv[0] === '--worker') {
        void inProcessWorker(argv[1], argv[2], Number(argv[3]), Number(argv[4]))
    } else {
        main().catch((error) => {
            console.error(error)
            process.exit(1)
        })
    }
}
