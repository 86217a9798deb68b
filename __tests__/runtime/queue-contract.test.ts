/** The retry queue's contract (issue 9), checked in PostHog's real runtimes with a real Redis:
 * a parked backlog reaches Intercom exactly once in every variant with a cache, also on Redis 6.0
 * and in variant 4 (no runEveryMinute); a worker killed with SIGKILL mid-drain loses nothing; where
 * timers exist (5-6) a 429 or a 5xx is waited out in place; a test-function run is not an error.
 * These are written against the new queue in index.ts and fail against the one before it.
 */
import { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { Emulator, startEmulator } from '../../tools/intercom/emulator'
import { RedisServer, startRedis } from '../../tools/lib/redis-server'
import {
    BACKLOG_CONFIG,
    BACKLOG_EMAIL,
    backlogEvents,
    countBy,
    drain,
    drainByMinutes,
    expireVolatileKeys,
    park,
    queueLength,
    reportedStatus,
    runEvents,
    storedReport,
} from '../../tools/runtime/backlog'
import { createRedisCache, RedisMode } from '../../tools/runtime/cache'
import { startVariant, StartOptions, VariantRuntime } from '../../tools/runtime/start-variant'
import { VariantId } from '../../tools/runtime/variants'
import { spawnWorker } from '../../tools/runtime/worker'

jest.setTimeout(120_000)

let emulator: Emulator
let redis: RedisServer
let pluginId = 200

beforeAll(async () => {
    ;[emulator, redis] = await Promise.all([startEmulator({ rateLimit: 1_000_000 }), startRedis()])
    emulator.addContact({ email: BACKLOG_EMAIL, role: 'user' })
})
afterAll(async () => {
    await Promise.all([emulator.close(), redis.stop()])
})
beforeEach(() => {
    emulator.reset()
    emulator.configure({ errorRate: 0, latencyMs: 0, rateLimit: 1_000_000, windowSeconds: 10 })
})

async function withRuntime<T>(
    id: VariantId,
    options: Partial<StartOptions>,
    body: (runtime: VariantRuntime) => Promise<T>
): Promise<T> {
    const runtime = await startVariant(id, {
        config: BACKLOG_CONFIG,
        emulatorUrl: emulator.url,
        redisUrl: redis.url,
        pluginId: ++pluginId,
        ...options,
    })
    try {
        return await body(runtime)
    } finally {
        await runtime.teardown()
    }
}

/** Parks `count` events, drains them the variant's way, and reports what Intercom stored. */
async function backlogRoundTrip(id: VariantId, count: number, redisMode: RedisMode = 'redis-7') {
    return withRuntime(id, { redisMode }, async (runtime) => {
        const events = backlogEvents(count, { prefix: `v${id}-${redisMode}` })
        const parked = await park(runtime, emulator, events)
        const parkedLength = await queueLength(runtime.redis!)
        const nudges = backlogEvents(Math.ceil(count / 10), { prefix: `nudge-v${id}`, offset: count + 10 })
        const drained = await drain(runtime, nudges)
        return {
            parked,
            parkedLength,
            drained,
            left: await queueLength(runtime.redis!),
            stored: storedReport(emulator, [...events, ...drained.nudged]),
        }
    })
}

describe.each([1, 2, 3, 4] as const)('variant %i, a real Redis', (id) => {
    test('a 1,000-event backlog parked while Intercom fails reaches it exactly once', async () => {
        const result = await backlogRoundTrip(id, 1000)
        expect(result.parked).toEqual({ queued: 1000 })
        expect(result.parkedLength).toBe(1000)
        expect(result.drained.errors).toEqual([])
        // Every drop is reported with its reason; here nothing may be dropped.
        expect(result.drained.dropped).toBe(0)
        expect(result.drained.droppedByReason).toEqual({})
        expect(result.left).toBe(0)
        expect(result.stored).toMatchObject({ missing: 0, unexpected: 0, deduplicated: 0 })
    })
})

test.each([1, 2, 3] as const)(
    'variant %i: events parked while a drain runs are delivered too',
    async (id) => {
        await withRuntime(id, {}, async (runtime) => {
            const first = backlogEvents(150, { prefix: `during-v${id}` })
            expect(await park(runtime, emulator, first)).toEqual({ queued: 150 })
            // Intercom half-broken: the drain delivers some while new events keep being parked.
            emulator.configure({ errorRate: 0.5 })
            const more = backlogEvents(50, { prefix: `during-new-v${id}`, offset: 1000 })
            await Promise.all([runtime.runEveryMinute!(), runEvents(runtime, more, 5)])
            emulator.configure({ errorRate: 0 })
            const drained = await drainByMinutes(runtime)
            expect(drained.remaining).toBe(0)
            expect(drained.dropped).toBe(0)
            expect(storedReport(emulator, [...first, ...more])).toMatchObject({ missing: 0, unexpected: 0 })
        })
    }
)

test('Redis 6.0 (LPOP with a count refused): the queue still drains completely', async () => {
    const result = await backlogRoundTrip(3, 200, 'redis-6.0')
    expect(result.parked).toEqual({ queued: 200 })
    expect(result.drained.errors).toEqual([])
    expect(result.left).toBe(0)
    expect(result.stored).toMatchObject({ missing: 0, unexpected: 0 })
})

test('variant 4 has no runEveryMinute: new events drain the parked ones, in bounded batches', async () => {
    await withRuntime(4, {}, async (runtime) => {
        expect(runtime.runEveryMinute).toBeUndefined()
        const events = backlogEvents(200, { prefix: 'v4-onevent' })
        expect(await park(runtime, emulator, events)).toEqual({ queued: 200 })
        const nudges = backlogEvents(20, { prefix: 'v4-nudge', offset: 500 })
        const drained = await drain(runtime, nudges)
        expect(await queueLength(runtime.redis!)).toBe(0)
        // ≈50 a call: 200 parked need at least 4 new events, and no more than 20.
        expect(drained.nudged.length).toBeGreaterThanOrEqual(4)
        expect(storedReport(emulator, [...events, ...drained.nudged])).toMatchObject({
            missing: 0,
            unexpected: 0,
        })
    })
})

test('Redis down while Intercom fails: no event is reported queued, and the errors say why in few words', async () => {
    const down = await startRedis()
    try {
        await withRuntime(3, { redisUrl: down.url }, async (runtime) => {
            await down.kill()
            emulator.configure({ errorRate: 1 })
            const treatments = await runEvents(runtime, backlogEvents(8, { prefix: 'redis-down' }), 8)
            expect(countBy(treatments, reportedStatus)).toEqual({ failed: 8 })
            // One clear error per kind, not one per event.
            const kinds = new Set(treatments.map((t) => t.error!.replace(/\d+/g, 'N')))
            expect(kinds.size).toBeLessThanOrEqual(2)
        })
    } finally {
        await down.stop()
    }
})

function exitOf(
    child: ChildProcess
): Promise<{ code: number | null; signal: string | null; stderr: string }> {
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.stdout?.resume()
    return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, stderr })))
}

test('a worker killed with SIGKILL mid-drain loses no event: the next worker delivers the rest', async () => {
    const id = 3
    const dir = mkdtempSync(path.join(tmpdir(), 'runtime-kill-'))
    const noEvents = path.join(dir, 'none.jsonl')
    writeFileSync(noEvents, '')
    const events = backlogEvents(1000, { prefix: 'killed' })
    const plugin = ++pluginId
    try {
        await withRuntime(id, { pluginId: plugin }, async (runtime) => {
            expect(await park(runtime, emulator, events)).toEqual({ queued: 1000 })
        })
        emulator.configure({ latencyMs: 5 })
        const args = ['--variant', String(id), '--emulator', emulator.url, '--redis', redis.url]
        const drainArgs = [...args, '--plugin-id', String(plugin), '--events', noEvents, '--minutes', '50']

        const first = spawnWorker(drainArgs)
        let storedAtKill = -1
        const unsubscribe = emulator.onRequest((request) => {
            if (storedAtKill < 0 && request.path === '/events' && emulator.events().length >= 250) {
                storedAtKill = emulator.events().length
                first.kill('SIGKILL')
            }
        })
        const killed = await exitOf(first)
        unsubscribe()
        expect(killed.signal).toBe('SIGKILL')
        expect(storedAtKill).toBeGreaterThanOrEqual(250)
        expect(storedAtKill).toBeLessThan(1000)

        // The dead worker's drain lock outlives it until its TTL: let that time pass.
        const cache = createRedisCache({ redisUrl: redis.url, pluginId: plugin })
        await expireVolatileKeys(cache)
        emulator.configure({ latencyMs: 0 })
        const second = await exitOf(spawnWorker(drainArgs))
        expect(second).toMatchObject({ code: 0, stderr: '' })
        expect(await queueLength(cache)).toBe(0)
        await cache.close()
        // At least once: a retry Intercom deduplicates is fine, a missing event is not.
        expect(storedReport(emulator, events)).toMatchObject({ missing: 0, unexpected: 0 })
    } finally {
        rmSync(dir, { recursive: true, force: true })
    }
})

describe('where timers exist (CDP, variants 5-6)', () => {
    test('variant 6: a 429 with a 10 s reset is waited out in place; no event fails for the rate limit', async () => {
        // Intercom's own window: PostHog's re-runs (1-3 s apart, 3 runs) cannot outlast it.
        emulator.configure({ rateLimit: 8, windowSeconds: 10 })
        await withRuntime(6, {}, async (runtime) => {
            const events = backlogEvents(12, { prefix: 'v6-429' })
            const treatments = await runEvents(runtime, events, 4)
            expect(countBy(treatments, reportedStatus)).toEqual({ delivered: 12 })
            expect(emulator.stats().rateLimited).toBeGreaterThan(0)
            expect(storedReport(emulator, events)).toMatchObject({ missing: 0 })
        })
    })

    test('variant 5: a 5xx is retried in place with short delays; nothing is lost to it', async () => {
        emulator.configure({ errorRate: 0.3 })
        await withRuntime(5, {}, async (runtime) => {
            const events = backlogEvents(30, { prefix: 'v5-5xx' })
            // One at a time: the emulator's seeded faults then fall on the same requests in every run.
            const treatments = await runEvents(runtime, events, 1)
            expect(countBy(treatments, reportedStatus)).toEqual({ delivered: 30 })
            expect(storedReport(emulator, events)).toMatchObject({ missing: 0 })
        })
    })

    test.each([5, 6] as const)(
        'variant %i: a PostHog test-function run ends without an error',
        async (id) => {
            await withRuntime(id, { testFunction: true }, async (runtime) => {
                const [event] = backlogEvents(1, { prefix: `test-function-v${id}` })
                const treatment = await runtime.onEvent(event)
                expect(treatment.status).toBe('ok')
                expect(treatment.runs).toBe(1)
                expect(runtime.logs.filter((log) => log.level === 'error')).toEqual([])
                // Nothing but GET requests reached Intercom: PostHog answered the others itself.
                expect(emulator.requests().every((request) => request.method === 'GET')).toBe(true)
            })
        }
    )
})
