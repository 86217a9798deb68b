/** The plugin-server harness: delivery through node-fetch, outcomes, RetryError delays, timeouts and runEveryMinute. */
import * as path from 'node:path'

import {
    createMemoryStore,
    createPluginCache,
    createRedisStore,
    PluginCache,
} from '../../tools/runtime/cache'
import {
    createHarness,
    Harness,
    HarnessEvent,
    HarnessOptions,
    retryDelayMs,
} from '../../tools/runtime/harness'
import { Loopback, Reply, startLoopback } from '../fixtures/loopback'

const fixture = (name: string): string => path.join(__dirname, '..', 'fixtures', `${name}.ts`)

let emulator: Loopback
let reply: Reply | 'hang' = { status: 202 }
const open: Harness[] = []

beforeAll(async () => {
    emulator = await startLoopback(() => reply)
})
afterEach(async () => {
    await Promise.all(open.splice(0).map((harness) => harness.close()))
    reply = { status: 202 }
})
afterAll(() => emulator.close())

/** One place that builds a harness for a fixture, fast settings by default. */
async function harnessFor(
    plugin: string,
    options: Partial<HarnessOptions> & Pick<HarnessOptions, 'mode'>
): Promise<Harness> {
    const harness = await createHarness({
        pluginFile: fixture(plugin),
        config: {},
        emulatorUrl: emulator.url,
        delayScale: 0.001,
        minuteMs: 0,
        ...options,
    })
    open.push(harness)
    return harness
}

function events(count: number, overrides: Partial<HarnessEvent> = {}): HarnessEvent[] {
    return Array.from({ length: count }, (_, i) => ({
        uuid: `00000000-0000-0000-0000-00000000000${i}`,
        event: 'signed_up',
        distinct_id: `user-${i}`,
        timestamp: '2024-05-01T12:00:00.000Z',
        properties: { email: `user${i}@example.com` },
        ...overrides,
    }))
}

describe('delivery through the redirected node-fetch', () => {
    test('spreads events over workers and counts the Intercom host asked for', async () => {
        const harness = await harnessFor('calls-intercom', {
            mode: 'plugin-server',
            workers: 3,
            config: { token: 't', host: 'api.au.intercom.io' },
        })
        const summary = await harness.run(events(6))
        expect(summary).toMatchObject({
            events: 6,
            delivered: 6,
            failed: {},
            intercomHosts: { 'api.au.intercom.io': 6 },
        })
        expect(new Set(harness.records().map((record) => record.worker))).toEqual(new Set([0, 1, 2]))
    })

    test('can keep each distinct_id on one worker', async () => {
        const harness = await harnessFor('calls-intercom', {
            mode: 'plugin-server',
            workers: 4,
            distribute: 'distinct_id',
            config: { token: 't', host: 'api.intercom.io' },
        })
        await harness.run(events(8, { distinct_id: 'same-person' }))
        expect(new Set(harness.records().map((record) => record.worker)).size).toBe(1)
    })

    test('reports what onEvent resolved to, by status and reason', async () => {
        reply = { status: 404 }
        const harness = await harnessFor('calls-intercom', {
            mode: 'cdp',
            config: { token: 't', host: 'api.intercom.io' },
        })
        expect(await harness.run(events(2))).toMatchObject({ delivered: 0, skipped: { 'http 404': 2 } })
    })
})

describe('outcomes', () => {
    test('are counted by status, and by reason where the summary keeps one', async () => {
        const harness = await harnessFor('reports-status', { mode: 'cdp' })
        const asked = [
            { status: 'delivered' },
            { status: 'skipped', reason: 'no valid email' },
            { status: 'skipped', reason: 'no valid email' },
            { status: 'skipped' },
            { status: 'queued', reason: 'rate_limited' },
            { status: 'synced' },
            {},
        ]
        const summary = await harness.run(asked.map((properties, i) => ({ ...events(i + 1)[i], properties })))
        expect(summary).toMatchObject({
            events: 7,
            delivered: 1,
            skipped: { 'no valid email': 2, unspecified: 1 },
            queued: 1,
            queuedByReason: { rate_limited: 1 },
            done: 1,
            failed: {},
            statuses: { delivered: 1, skipped: 3, queued: 1, synced: 1, done: 1 },
        })
    })
})

describe('RetryError handling', () => {
    test('has the delays of PostHog: 5, 10, 20, 40 s', () => {
        expect([1, 2, 3, 4].map((attempt) => retryDelayMs(attempt))).toEqual([5000, 10000, 20000, 40000])
    })

    test.each([
        ['plugin-server, always failing', { mode: 'plugin-server' }, {}, 5, 4, 'failed'],
        ['plugin-server, failing twice', { mode: 'plugin-server' }, { failures: '2' }, 3, 2, 'delivered'],
        [
            'plugin-server without retries',
            { mode: 'plugin-server', retries: false },
            { failures: '1' },
            1,
            0,
            'failed',
        ],
        ['cdp', { mode: 'cdp' }, { failures: '1' }, 1, 0, 'failed'],
    ] as const)('%s', async (_name, options, config, attempts, retried, status) => {
        const harness = await harnessFor('throws-retry', { ...options, config })
        const record = await harness.send(events(1)[0])
        expect(record).toMatchObject({ attempts, status })
        const summary = harness.summary()
        expect(summary.retried).toBe(retried)
        expect(summary.failed).toEqual(status === 'failed' ? { 'RetryError: Intercom is busy': 1 } : {})
    })

    test('times a hanging call out with a TimeoutError, which the old runtime retried', async () => {
        reply = 'hang'
        const harness = await harnessFor('calls-intercom', {
            mode: 'plugin-server',
            taskTimeoutMs: 30,
            config: { token: 't', host: 'api.intercom.io' },
        })
        const record = await harness.send(events(1)[0])
        expect(record).toMatchObject({
            attempts: 5,
            status: 'failed',
            reason: 'TimeoutError: Script execution timed out after promise waited for 30 ms (onEvent)',
        })
    })
})

describe('runEveryMinute', () => {
    test('drain() runs the task until the plugin reports an empty queue', async () => {
        const harness = await harnessFor('minute-queue', {
            mode: 'plugin-server',
            workers: 2,
            config: { perRun: '2' },
        })
        const summary = await harness.run(events(5))
        expect(summary).toMatchObject({ queued: 5, queuedByReason: { 'waiting for the minute task': 5 } })
        await expect(harness.drain({ intervalMs: 0 })).resolves.toEqual({
            rounds: 3,
            empty: true,
            remaining: 0,
        })
        // The workers share one cache, and the task ran on one of them only.
        expect(harness.summary().minute).toEqual({
            runs: 3,
            delivered: 5,
            retried: 0,
            dropped: 0,
            remaining: 0,
            failed: {},
        })
    })

    test('drain() stops at maxRounds when the queue does not empty', async () => {
        const harness = await harnessFor('minute-queue', { mode: 'plugin-server', config: { perRun: '1' } })
        await harness.run(events(4))
        await expect(harness.drain({ maxRounds: 2, intervalMs: 0 })).resolves.toEqual({
            rounds: 2,
            empty: false,
            remaining: 2,
        })
    })

    test('the clock calls the task by itself while the harness is open', async () => {
        const harness = await harnessFor('minute-queue', {
            mode: 'plugin-server',
            minuteMs: 5,
            config: { perRun: '10' },
        })
        await harness.run(events(3))
        for (let wait = 0; wait < 200 && harness.summary().minute.delivered < 3; wait++) {
            await new Promise((resolve) => setTimeout(resolve, 10))
        }
        expect(harness.summary().minute.delivered).toBe(3)
    })

    test('cdp has no cache and no schedule', async () => {
        const harness = await harnessFor('minute-queue', { mode: 'cdp' })
        const summary = await harness.run(events(1))
        expect(Object.keys(summary.failed)).toEqual([expect.stringMatching(/^TypeError: .*lpush/)])
        await expect(harness.drain()).resolves.toEqual({ rounds: 0, empty: true, remaining: 0 })
    })
})

describe('what the plugin sees in each runtime', () => {
    const withPerson = events(1, { person: { properties: { email: 'ada@example.com' } } })

    test.each([
        [
            'plugin-server',
            'attachments,cache,config,geoip,global,jobs,metrics,storage',
            'none',
            { source: 'console', level: 'log' },
        ],
        ['cdp', 'config,fetch,geoip,global,logger', 'ada@example.com', { source: 'logger', level: 'info' }],
    ] as const)('%s', async (mode, metaKeys, personEmail, logShape) => {
        const harness = await harnessFor('meta-shape', { mode })
        const summary = await harness.run(withPerson)
        expect(summary.skipped).toEqual({ 'inspected only': 1 })
        expect(summary.logs).toEqual([
            { worker: 0, ...logShape, text: `meta: ${metaKeys}` },
            { worker: 0, ...logShape, text: `person email: ${personEmail}` },
        ])
    })

    test.each(['plugin-server', 'cdp'] as const)(
        '%s: a failed setupPlugin fails every event',
        async (mode) => {
            const harness = await harnessFor('meta-shape', { mode, config: { failSetup: 'yes' } })
            const summary = await harness.run(events(2))
            const message = 'Error: Intercom API key missing: set it in the plugin config'
            expect(summary.setupFailures).toEqual([message])
            expect(summary.failed).toEqual({ [`Error: setup failed: ${message}`]: 2 })
        }
    )
})

/** The cache API contract, run against the in-memory store and, when REDIS_URL is set, Redis. */
function cacheContract(name: string, makeCache: () => { cache: PluginCache; close(): Promise<void> }): void {
    describe(name, () => {
        let cache: PluginCache
        let close: () => Promise<void>
        beforeEach(() => ({ cache, close } = makeCache()))
        afterEach(() => close())

        test('a missing key reads as null whatever the default', async () => {
            await expect(cache.get('missing', 'fallback')).resolves.toBeNull()
        })

        test('values round-trip through JSON, or raw when asked', async () => {
            await cache.set('object', { a: [1, 'b'] })
            await cache.set('raw', 'plain text', undefined, { jsonSerialize: false })
            await expect(cache.get('object', null)).resolves.toEqual({ a: [1, 'b'] })
            await expect(cache.get('raw', null, { jsonSerialize: false })).resolves.toBe('plain text')
            await expect(cache.get('raw', null)).resolves.toBeNull()
        })

        test('incr counts from zero and from a number set before', async () => {
            await expect(cache.incr('n')).resolves.toBe(1)
            await cache.set('m', 41)
            await expect(cache.incr('m')).resolves.toBe(42)
        })

        test('lists behave like Redis lists', async () => {
            await expect(cache.lpush('q', ['a', 'b'])).resolves.toBe(2)
            await expect(cache.lpush('q', 'c')).resolves.toBe(3)
            await expect(cache.lrange('q', 0, -1)).resolves.toEqual(['c', 'b', 'a'])
            await expect(cache.llen('q')).resolves.toBe(3)
            await cache.lpush('q', ['b'])
            await expect(cache.lrem('q', 1, 'b')).resolves.toBe(1)
            await expect(cache.lrange('q', 0, -1)).resolves.toEqual(['c', 'b', 'a'])
            await expect(cache.lpop('q', 2)).resolves.toEqual(['c', 'b'])
            await expect(cache.lpop('q', 5)).resolves.toEqual(['a'])
            await expect(cache.lpop('q', 1)).resolves.toBeNull()
            await expect(cache.llen('q')).resolves.toBe(0)
        })

        test('lpush refuses what PostHog refused', async () => {
            await expect(cache.lpush('q', { a: 1 })).rejects.toThrow(
                'cache.lpush expects a string value or an array'
            )
            await expect(cache.lpush('q', Array.from({ length: 1001 }, String))).rejects.toThrow(
                'Maximum: 1000'
            )
        })

        test('reading a list as a value fails like Redis', async () => {
            await cache.lpush('q', 'a')
            await expect(cache.get('q', null)).rejects.toThrow('WRONGTYPE')
        })
    })
}

describe('meta.cache', () => {
    test('expires keys after their TTL', async () => {
        let now = 1_000_000
        const cache = createPluginCache(
            createMemoryStore(() => now),
            'ns/'
        )
        await cache.set('contact', 'c1', 60)
        await cache.set('kept', 'k')
        now += 59_000
        await expect(cache.get('contact', null)).resolves.toBe('c1')
        now += 1_000
        await expect(cache.get('contact', null)).resolves.toBeNull()
        await cache.expire('kept', 1)
        now += 1_000
        await expect(cache.get('kept', null)).resolves.toBeNull()
    })

    cacheContract('in memory', () => ({
        cache: createPluginCache(createMemoryStore(), 'ns/'),
        close: async () => undefined,
    }))

    const redisUrl = process.env.REDIS_URL
    if (redisUrl) {
        cacheContract('in Redis', () => {
            const store = createRedisStore(redisUrl)
            const namespace = `@plugin/harness-test-${process.pid}-${Date.now()}/`
            return {
                cache: createPluginCache(store, namespace),
                close: async () => {
                    await store.clear(namespace)
                    await store.close()
                },
            }
        })
    }
})
