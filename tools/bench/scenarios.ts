/** The bench's scenarios: each runs the workload against a fresh emulator and measures calls, losses and CPU. */
import { Presets, SingleBar } from 'cli-progress'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import fetch from 'node-fetch'

import { addCount, formatCount, sumCounts } from '../lib/report'
import { sleep } from '../lib/sleep'
import { WindowGate } from '../replay/fetch'
import { replay } from '../replay'
import { createHarness, Harness, HarnessEvent, HarnessOptions } from '../runtime/harness'
import { FetchFn, hostNodeFetch, redirectingFetch } from '../runtime/load-plugin'
import { cpuSince, EmulatorHandle, EmulatorOverrides, SEARCH_ROUTE } from './emulator'
import type { BenchOptions } from './bench'
import { BENCH_CONFIG, TOKEN, Workload } from './workload'

export const SCENARIOS = ['plugin-server', 'cdp', 'cdp-paced', 'no-cache', 'replay', 'cpu'] as const
export type ScenarioName = (typeof SCENARIOS)[number]
export const SETUP_ROUTE = 'GET /me'

/** One scenario's figures, as written to the JSON file (see `measure`). */
export type ScenarioResult = Awaited<ReturnType<typeof measure>>

/** Host CPU per event in steady state (µs): index.ts, a plugin that only POSTs (harness and HTTP client), the
 * difference; `http` against the emulator (limit lifted), `stub` against an in-process stub (no sockets). */
export type CpuMeasurement = Awaited<ReturnType<typeof measurePair>>

export interface Context {
    options: BenchOptions
    workload: Workload
    startEmulator(overrides?: EmulatorOverrides): Promise<EmulatorHandle>
}

function median(values: number[]): number {
    const sorted = [...values].sort((a, b) => a - b)
    const middle = Math.floor(sorted.length / 2)
    return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/** Wall time (ms) and this process's CPU (µs) since it was started. */
function stopwatch() {
    const [started, cpuStart] = [Date.now(), process.cpuUsage()]
    return { started, ms: () => Date.now() - started, cpu: () => cpuSince(cpuStart) }
}
type Stopwatch = ReturnType<typeof stopwatch>

type Progress = { update(value: number, detail: string): void; stop(): void }

function progressBar(options: BenchOptions, title: string, total: number): Progress {
    if (!options.progress || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined }
    const format = `${title.padEnd(14)} [{bar}] {value}/{total} delivered | {detail}`
    const bar = new SingleBar(
        { stream: process.stderr, format, clearOnComplete: true, hideCursor: true },
        Presets.shades_classic
    )
    bar.start(total, 0, { detail: '' })
    return { update: (value, detail) => bar.update(value, { detail }), stop: () => bar.stop() }
}

/** What a scenario's client reported; the emulator's side is measured around it. */
interface Outcome {
    /** onEvent, plus runEveryMinute for the plugin-server queue. */
    delivered: number
    deliveredFromQueue?: number
    failed: Record<string, number>
    logLines?: number
    /** Until every event had its first outcome (delivered, queued, failed); the rest is draining the queue. */
    feedMs?: number
    /** plugin-server: host CPU (µs) while fed and while draining; each runEveryMinute's deliveries; events parked. */
    phaseCpuMicros?: { feed: number; drain: number }
    queueRuns?: number[]
    queued?: number
}

/** A scenario's client, ready to run once its setup calls are made. */
interface Prepared {
    run(watch: Stopwatch, progress: Progress): Promise<Outcome>
    close?(): Promise<void>
}

/** `prepare` makes its setup calls, then `run` is measured: host CPU and wall time here, calls in the emulator. */
async function measure(
    ctx: Context,
    scenario: { name: ScenarioName; setup: string },
    prepare: (url: string) => Promise<Prepared>
) {
    const events = ctx.workload.events.length
    const emulator = await ctx.startEmulator()
    const progress = progressBar(ctx.options, scenario.name, events)
    let prepared: Prepared | undefined
    try {
        prepared = await prepare(emulator.url)
        const before = await emulator.snapshot()
        const watch = stopwatch()
        const { feedMs, ...outcome } = await prepared.run(watch, progress)
        const [wallMs, hostCpu] = [watch.ms(), watch.cpu()]
        const after = await emulator.snapshot(watch.started)
        // GET /me is setup: once per harness worker before the first event, once for the replay as it starts.
        const setupCalls = sumCounts(after.calls[SETUP_ROUTE])
        const calls = after.stats.calls - setupCalls
        const gaps = after.repeatGapsMs
        const emulatorCpu =
            after.cpuMicros === null || before.cpuMicros === null ? null : after.cpuMicros - before.cpuMicros
        return {
            deliveredFromQueue: 0,
            logLines: 0,
            ...scenario,
            ...outcome,
            events,
            expected: events,
            stored: after.stored, // by the emulator; lost: every event of the workload not stored
            lost: events - after.stored,
            deduplicated: after.stats.eventsDeduplicated, // POSTs of an event already stored (retries)
            setupCalls, // not counted in `calls`
            calls,
            callsByRoute: after.calls,
            rateLimited: after.stats.rateLimited - before.stats.rateLimited,
            searchedEmails: after.searchedEmails, // the floor of lookups with a shared cache
            // Successful searches beyond one per email (concurrent lookups on different workers), and how long
            // after the previous search of the same email they came.
            duplicateSearches: (after.calls[SEARCH_ROUTE]?.['200'] ?? 0) - after.searchedEmails,
            repeatedSearchGapMs: gaps.length === 0 ? null : { median: median(gaps), max: Math.max(...gaps) },
            callsPerDelivered: after.stored === 0 ? null : calls / after.stored,
            wallSeconds: wallMs / 1000,
            feedSeconds: (feedMs ?? wallMs) / 1000,
            eventsPerSecond: after.stored / (wallMs / 1000),
            // The plugin, its HTTP client and the harness (the emulator too when it runs in-process).
            hostCpuMicrosPerEvent: hostCpu / events,
            emulatorCpuMicrosPerCall: emulatorCpu === null || calls === 0 ? null : emulatorCpu / calls,
            callsPerWindow: after.callsPerWindow, // setup excluded, from the first event on
        }
    } finally {
        progress.stop()
        await prepared?.close?.()
        await emulator.close()
    }
}

// --- index.ts in the harness: plugin-server, cdp, cdp-paced

/** Events all at once (the workers' slots pace them), or at a steady rate; counts each first outcome. */
async function feed(harness: Harness, events: HarnessEvent[], progress: Progress, rate?: number) {
    const started = Date.now()
    const counts = { delivered: 0, queued: 0 }
    const pending: Promise<void>[] = []
    for (const [i, event] of events.entries()) {
        if (rate !== undefined) await sleep(started + (i * 1000) / rate - Date.now())
        const sent = harness.send(event).then(({ status }) => {
            if (status === 'delivered' || status === 'queued') counts[status]++
            const doing = status === 'queued' ? 'queueing what Intercom cannot take now' : 'sending'
            progress.update(counts.delivered, doing)
        })
        pending.push(sent)
    }
    await Promise.all(pending)
    return counts
}

/**
 * runEveryMinute on a clock started with the feed, as PostHog's schedule would run it, until the queue is
 * empty (or a bound far above what draining needs, so a stuck queue ends the run instead of hanging it).
 */
async function drainQueue(harness: Harness, ctx: Context, watch: Stopwatch, progress: Progress) {
    let delivered = harness.summary().delivered
    const runs: number[] = []
    const maxRuns = Math.ceil(ctx.workload.events.length / 500) + 20
    for (let run = 1; run <= maxRuns; run++) {
        await sleep(watch.started + run * ctx.options.minuteMs - Date.now())
        const report = await harness.runMinute()
        runs.push(report?.delivered ?? 0)
        delivered += report?.delivered ?? 0
        const remaining = report?.remaining ?? 0
        progress.update(delivered, `runEveryMinute: ${formatCount(remaining)} waiting in the retry queue`)
        if (remaining === 0) break
    }
    return runs
}

function runHarness(name: 'plugin-server' | 'cdp' | 'cdp-paced', ctx: Context): Promise<ScenarioResult> {
    const { options, workload } = ctx
    const queue = name === 'plugin-server'
    const setup = {
        'plugin-server': `${options.workers} workers sharing a cache, events fed as fast as taken, retry queue drained by runEveryMinute`,
        cdp: `${options.workers} workers, no cache (each keeps its own lookups), no runEveryMinute, no retries, events fed as fast as taken`,
        'cdp-paced': `as cdp, events fed at ${options.pacedRate}/s (below the limit)`,
    }[name]
    return measure(ctx, { name, setup }, async (emulatorUrl) => {
        const harness = await createHarness({
            mode: queue ? 'plugin-server' : 'cdp',
            workers: options.workers,
            concurrency: options.concurrency,
            distribute: options.distribute,
            config: BENCH_CONFIG,
            emulatorUrl,
            minuteMs: 0, // the drain below is the clock
            maxLogLines: 100,
        })
        const run = async (watch: Stopwatch, progress: Progress): Promise<Outcome> => {
            const rate = name === 'cdp-paced' ? options.pacedRate : undefined
            const first = await feed(harness, workload.events, progress, rate)
            const [feedMs, feedCpu] = [watch.ms(), watch.cpu()]
            // Nothing queued: the run ends with the feed, not at the next runEveryMinute.
            const queueRuns = queue && first.queued > 0 ? await drainQueue(harness, ctx, watch, progress) : []
            const summary = harness.summary()
            const outcome = {
                delivered: summary.delivered + summary.minute.delivered,
                deliveredFromQueue: summary.minute.delivered,
                failed: summary.failed,
                logLines: sumCounts(summary.logLevels),
                feedMs,
            }
            if (!queue) return outcome
            const phaseCpuMicros = { feed: feedCpu, drain: watch.cpu() - feedCpu }
            return { ...outcome, queueRuns, queued: summary.queued, phaseCpuMicros }
        }
        return { run, close: () => harness.close() }
    })
}

// --- no-cache: the old plugin's two calls per event, waiting out spent windows as the plugin does

const HEADERS = {
    Authorization: `Bearer ${TOKEN}`,
    Accept: 'application/json',
    'Content-Type': 'application/json',
    'Intercom-Version': '2.11',
}

/** One POST, through the rate-limit gate, repeated after the window resets when Intercom answers 429. */
async function post(url: string, body: unknown, gate: WindowGate): Promise<{ status: number; text: string }> {
    for (;;) {
        await gate.acquire()
        const response = await fetch(url, { method: 'POST', headers: HEADERS, body: JSON.stringify(body) })
        gate.release(response.status, response.headers)
        const text = await response.text()
        if (response.status !== 429) return { status: response.status, text }
    }
}

/** Search by email, then POST /events by contact id (users before leads): two calls, every time. */
async function deliverUncached(url: string, event: HarnessEvent, gate: WindowGate): Promise<boolean> {
    const query = { field: 'email', operator: '=', value: String(event.properties?.email) }
    const search = await post(`${url}/contacts/search`, { query }, gate)
    const contacts = (JSON.parse(search.text) as { data?: Array<{ id: string; role: string }> }).data ?? []
    const contact = contacts.find((c) => c.role === 'user') ?? contacts[0]
    if (search.status !== 200 || !contact) return false
    const created_at = Math.floor(Date.parse(event.timestamp) / 1000)
    const posted = await post(`${url}/events`, { event_name: event.event, created_at, id: contact.id }, gate)
    return posted.status === 202
}

function runNoCache(ctx: Context): Promise<ScenarioResult> {
    const events = ctx.workload.events
    const parallel = ctx.options.workers * ctx.options.concurrency
    const setup = `${parallel} requests in flight; search + POST per event (old plugin), waits out 429s`
    return measure(ctx, { name: 'no-cache', setup }, async (url) => ({
        run: async (_watch, progress) => {
            const gate = new WindowGate()
            const outcome = { delivered: 0, failed: {} as Record<string, number> }
            let next = 0
            const lane = async (): Promise<void> => {
                while (next < events.length) {
                    if (await deliverUncached(url, events[next++], gate)) outcome.delivered++
                    else addCount(outcome.failed, 'not delivered')
                    progress.update(outcome.delivered, 'search + POST /events for every event')
                }
            }
            await Promise.all(Array.from({ length: parallel }, lane))
            return outcome
        },
    }))
}

// --- replay: the workload as an export file, sent as a backfill would be

/**
 * `npm run replay` on the workload written as JSON Lines, to the real-Intercom target (host guard and all)
 * with Intercom's hosts redirected to the emulator: what a backfill makes of Intercom's rate limit.
 */
function runReplay(ctx: Context): Promise<ScenarioResult> {
    const setup = 'npm run replay of the workload as one JSON Lines file, default settings'
    return measure(ctx, { name: 'replay', setup }, async (url) => {
        const directory = mkdtempSync(path.join(tmpdir(), 'intercom-bench-replay-'))
        const exportFile = path.join(directory, 'export.jsonl')
        writeFileSync(exportFile, `${ctx.workload.events.map((event) => JSON.stringify(event)).join('\n')}\n`)
        const run = async (): Promise<Outcome> => {
            const summary = await replay({
                inputs: [exportFile],
                config: BENCH_CONFIG,
                target: { kind: 'intercom' },
                fetch: redirectingFetch(url, hostNodeFetch),
                checkpointDir: false,
                progress: false,
                print: () => undefined,
                notice: () => undefined,
            })
            return { delivered: summary.files[0].delivered, failed: summary.files[0].reasons }
        }
        return { run, close: async () => rmSync(directory, { recursive: true, force: true }) }
    })
}

export function runScenario(name: Exclude<ScenarioName, 'cpu'>, ctx: Context): Promise<ScenarioResult> {
    if (name === 'no-cache') return runNoCache(ctx)
    if (name === 'replay') return runReplay(ctx)
    return runHarness(name, ctx)
}

// --- cpu: the plugin minus a plugin that only posts, over HTTP and against an in-process stub of Intercom

/** A plugin that does the least an Intercom plugin can: one POST per event, nothing else. */
const NULL_PLUGIN = `import fetch from 'node-fetch'
export async function onEvent(event) {
    const response = await fetch('https://api.intercom.io/events', {
        method: 'POST',
        headers: { Authorization: 'Bearer ${TOKEN}', 'Content-Type': 'application/json' },
        body: JSON.stringify({ event_name: event.event, created_at: 0, id: event.distinct_id }),
        timeout: 10000,
    })
    await response.text()
    return { status: 'delivered' }
}
`

/**
 * Intercom at almost no CPU of its own, so that it cancels out of the difference (the Intercom model would
 * weigh more than the plugin): GET /me, a search finding one user, 202 to anything else; no window runs out.
 */
const stubIntercom: FetchFn = async (input, init) => {
    const route = new URL(String(input)).pathname
    let text = ''
    if (route === '/me') text = JSON.stringify({ type: 'admin', app: { region: 'US' } })
    if (route === '/contacts/search') {
        const email = (JSON.parse(init?.body ?? '{}') as { query?: { value?: string } }).query?.value
        text = JSON.stringify({ type: 'list', data: [{ type: 'contact', id: `c-${email}`, role: 'user' }] })
    }
    const headers = new Headers({
        'x-ratelimit-limit': '1666',
        'x-ratelimit-remaining': '1666',
        'x-ratelimit-reset': String(Math.ceil(Date.now() / 1000) + 10),
    })
    const status = text ? 200 : 202
    return { status, ok: true, headers, json: async () => JSON.parse(text), text: async () => text }
}

/** Where the harness sends the plugin's calls during a CPU measurement. */
type CpuTarget = Pick<HarnessOptions, 'emulatorUrl' | 'fetch'>
const STUB_TARGET: CpuTarget = { emulatorUrl: 'http://intercom-stub.invalid', fetch: stubIntercom }

/** Host CPU per event of `pluginFile` (index.ts when undefined): the median of the passes after a warm-up. */
async function cpuPerEvent(ctx: Context, pluginFile: string | undefined, target: CpuTarget): Promise<number> {
    const { workers, concurrency, cpuPasses } = ctx.options
    const harness = await createHarness({
        mode: 'plugin-server',
        workers,
        concurrency,
        config: BENCH_CONFIG,
        pluginFile,
        ...target,
        minuteMs: 0,
        maxLogLines: 0,
    })
    try {
        const samples: number[] = []
        for (let pass = 0; pass <= cpuPasses; pass++) {
            // Fresh uuids per pass, so nothing is mistaken for a repeat.
            const tail = pass.toString(16).padStart(4, '0')
            const events = ctx.workload.events.map((event) => ({
                ...event,
                uuid: event.uuid.slice(0, -4) + tail,
            }))
            const watch = stopwatch()
            await harness.run(events)
            // Pass 0 warms the JIT and the contact cache.
            if (pass > 0) samples.push(watch.cpu() / events.length)
        }
        return median(samples)
    } finally {
        await harness.close()
    }
}

async function measurePair(ctx: Context, nullPluginFile: string, target: CpuTarget) {
    const plugin = await cpuPerEvent(ctx, undefined, target)
    const nullPlugin = await cpuPerEvent(ctx, nullPluginFile, target)
    return {
        pluginMicrosPerEvent: plugin,
        nullPluginMicrosPerEvent: nullPlugin,
        ownMicrosPerEvent: plugin - nullPlugin,
    }
}

export async function runCpu(ctx: Context) {
    const directory = mkdtempSync(path.join(tmpdir(), 'intercom-bench-'))
    const nullPluginFile = path.join(directory, 'null-plugin.ts')
    writeFileSync(nullPluginFile, NULL_PLUGIN)
    // The rate limit is lifted here: this measures CPU, and waiting out windows would only add idle time.
    const emulator = await ctx.startEmulator({ rateLimit: 1_000_000_000 })
    try {
        return {
            http: await measurePair(ctx, nullPluginFile, { emulatorUrl: emulator.url }),
            stub: await measurePair(ctx, nullPluginFile, STUB_TARGET),
            passes: ctx.options.cpuPasses,
        }
    } finally {
        await emulator.close()
        rmSync(directory, { recursive: true, force: true })
    }
}
