/** The retry queue: parked, drained by onEvent and runEveryMinute, at least once, on any Redis PostHog ran. */
import type { CacheExtension } from '@posthog/plugin-scaffold'
import { RetryError } from '@posthog/plugin-scaffold'
import { CACHE_KEYS, FetchFn, HttpResponse, PluginMeta, onEvent, runEveryMinute } from '../index'
import { makeEvent, memoryCache, setup, useNock } from './helpers'

useNock()
afterEach(() => jest.restoreAllMocks())

const QUEUE = CACHE_KEYS.queue

function reply(status: number, body: unknown = {}): HttpResponse {
    const text = body === '' ? '' : JSON.stringify(body)
    return { status, headers: {}, json: async () => body, text: async () => text }
}

/** A scripted Intercom: every contact exists; POST /events answers `eventStatus()`. Records each event sent. */
function intercom(eventStatus: () => number = () => 202) {
    const events: { event_name: string; created_at: number }[] = []
    const fetch: FetchFn = async (url, init) => {
        const path = new URL(url).pathname
        if (path === '/contacts/search')
            return reply(200, { type: 'list', data: [{ id: 'c1', role: 'user' }] })
        if (path === '/events') {
            const status = eventStatus()
            if (status === 202) events.push(JSON.parse(init.body ?? '{}'))
            return reply(status, status === 202 ? '' : { errors: [{ message: 'down' }] })
        }
        return reply(404)
    }
    return { fetch, events }
}

/** A plugin instance on `cache`, whose Intercom is down until `up()` is called. */
async function parkedBacklog(cache: CacheExtension, count: number) {
    let down = true
    const remote = intercom(() => (down ? 503 : 202))
    const { meta, logs } = await setup({}, { cache })
    meta.fetch = remote.fetch
    for (let i = 0; i < count; i++) {
        await expect(
            onEvent(makeEvent({ uuid: `u${i}`, timestamp: `2024-05-01T12:00:${pad(i)}.000Z` }), meta)
        ).resolves.toEqual({
            status: 'queued',
            reason: 'transient',
        })
    }
    return { meta, logs, remote, up: () => (down = false) }
}

const pad = (i: number) => String(i % 60).padStart(2, '0')

/** Lets onEvent look at the queue again (it does so at most once a second per worker). */
function nextSecond(meta: PluginMeta): void {
    meta.global.nextDrainAt = 0
}

describe('onEvent drains the queue (PostHog from March 2025 never calls runEveryMinute)', () => {
    test('a later event, even one that is not sent, delivers the parked ones', async () => {
        const cache = memoryCache()
        const { meta, remote, up } = await parkedBacklog(cache, 3)
        up()
        nextSecond(meta)
        await expect(onEvent(makeEvent({ event: '$pageview' }), meta)).resolves.toMatchObject({
            status: 'skipped',
        })
        expect(remote.events.map((e) => e.created_at).sort()).toEqual([1714564800, 1714564801, 1714564802])
        expect(await cache.llen(QUEUE)).toBe(0)
    })

    test('a bounded batch (50) on each event while a backlog waits; an empty queue is looked at once a second', async () => {
        const cache = memoryCache()
        const { meta, remote, up } = await parkedBacklog(cache, 120)
        up()
        nextSecond(meta)
        await onEvent(makeEvent({ event: '$pageview' }), meta)
        expect(remote.events).toHaveLength(50)
        await onEvent(makeEvent({ event: '$pageview' }), meta)
        expect(remote.events).toHaveLength(100)
        await onEvent(makeEvent({ event: '$pageview' }), meta)
        expect(remote.events).toHaveLength(120)

        const llen = jest.spyOn(cache, 'llen')
        for (let i = 0; i < 3; i++) await onEvent(makeEvent({ event: '$pageview' }), meta)
        expect(llen).toHaveBeenCalledTimes(1) // found empty once, then left alone for a second
    })

    test('an event that was itself just parked does not drain (Intercom is failing)', async () => {
        const cache = memoryCache()
        const { meta, remote } = await parkedBacklog(cache, 2)
        nextSecond(meta)
        await expect(onEvent(makeEvent({ uuid: 'again' }), meta)).resolves.toMatchObject({ status: 'queued' })
        expect(remote.events).toHaveLength(0)
        expect(await cache.llen(QUEUE)).toBe(3)
    })
})

describe('at least once, with what every Redis accepts', () => {
    test('LPOP is never used: a cache that refuses it (Redis < 6.2) drains fully', async () => {
        const cache = memoryCache()
        cache.lpop = async () => {
            throw new Error("ERR wrong number of arguments for 'lpop' command")
        }
        const { meta, remote, up } = await parkedBacklog(cache, 150)
        up()
        await expect(runEveryMinute(meta)).resolves.toEqual({
            delivered: 150,
            retried: 0,
            dropped: 0,
            droppedByReason: {},
            remaining: 0,
        })
        expect(new Set(remote.events.map((e) => e.created_at)).size).toBe(60) // 150 events over 60 distinct seconds
        expect(remote.events).toHaveLength(150)
    })

    test('an entry is removed only after its delivery: when removal fails it stays, to be delivered again', async () => {
        const cache = memoryCache()
        const { meta, remote, up } = await parkedBacklog(cache, 2)
        up()
        const lrem = cache.lrem
        cache.lrem = async () => {
            throw new Error('Connection is closed.')
        }
        await runEveryMinute(meta)
        expect(remote.events).toHaveLength(2) // one concurrent chunk, then it stops at the failed removals
        expect(await cache.llen(QUEUE)).toBe(2) // nothing lost

        cache.lrem = lrem
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 2, remaining: 0 })
        // Sent twice, stored once: Intercom deduplicates on contact + event_name + created_at.
        expect(remote.events).toHaveLength(4)
    })

    test('a retry is pushed back before the old entry is removed, with one attempt more', async () => {
        const cache = memoryCache()
        const { meta } = await parkedBacklog(cache, 1)
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ retried: 1, remaining: 1 })
        const [stored] = await cache.lrange(QUEUE, 0, -1)
        expect(JSON.parse(stored)).toMatchObject({ uuid: 'u0', attempts: 2 })
    })
})

describe('one drainer at a time', () => {
    test('two workers draining at once: each entry is sent once', async () => {
        const cache = memoryCache()
        const { meta, remote, up } = await parkedBacklog(cache, 40)
        const other = await setup({}, { cache })
        other.meta.fetch = remote.fetch
        up()
        const [a, b] = await Promise.all([runEveryMinute(meta), runEveryMinute(other.meta)])
        expect(a.delivered + b.delivered).toBe(40)
        expect(Math.min(a.delivered, b.delivered)).toBe(0)
        expect(remote.events).toHaveLength(40)
    })

    test('a lock left by a worker that died expires: the queue is not stranded', async () => {
        const cache = memoryCache()
        const { meta, up } = await parkedBacklog(cache, 1)
        up()
        const now = Date.now()
        await cache.incr(CACHE_KEYS.drainLock(now)) // taken, never released
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 0, remaining: 1 })
        jest.spyOn(Date, 'now').mockReturnValue(now + 600_000)
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1, remaining: 0 })
    })
})

describe('where nothing can park the event, one clear error per kind', () => {
    test('the queue full at 10,000: RetryError that says so', async () => {
        const cache = memoryCache()
        const filler = [...Array(1000)].map((_, i) => `{"filler":${i}}`)
        for (let i = 0; i < 10; i++) await cache.lpush(QUEUE, filler)
        const { meta } = await setup({}, { cache })
        meta.fetch = intercom(() => 503).fetch
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(
            /retry queue could not take it \(queue full\)/
        )
        expect(await cache.llen(QUEUE)).toBe(10_000)
    })

    test('Redis down: RetryError naming the cache, logged once per 10 s however many events', async () => {
        const cache = memoryCache()
        const broken = new Error('Connection is closed.')
        cache.lpush = async () => {
            throw broken
        }
        cache.llen = async () => {
            throw broken
        }
        const { meta, logs } = await setup({}, { cache })
        meta.fetch = intercom(() => 503).fetch
        for (let i = 0; i < 3; i++) {
            const failure = onEvent(makeEvent({ uuid: `u${i}` }), meta)
            await expect(failure).rejects.toBeInstanceOf(RetryError)
            await expect(failure).rejects.toThrow(/cache unavailable/)
        }
        expect(logs.filter((line) => line.includes('could not take it'))).toEqual([
            expect.stringMatching(/^warn: Event u0 not delivered yet: .*\(cache unavailable\)/),
        ])
    })
})

test("PostHog's test function (every POST answered 200 'Test function'): a clear, non-error outcome", async () => {
    const { meta, logs } = await setup()
    meta.fetch = async () => reply(200, { status: 'OK', message: 'Test function' })
    await expect(onEvent(makeEvent({ uuid: 'test-1' }), meta)).resolves.toEqual({
        status: 'skipped',
        reason: 'test run',
    })
    expect(logs).toContainEqual(
        expect.stringMatching(/^info: Test run of event test-1: .*nothing was sent to Intercom/)
    )
})
