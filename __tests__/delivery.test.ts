/** onEvent and runEveryMinute on the wire: exact requests to Intercom, error classes, caching, the retry queue. */
import { RetryError } from '@posthog/plugin-scaffold'
import nock from 'nock'
import {
    FetchFn,
    HttpResponse,
    PluginConfig,
    backoffUntil,
    CACHE_KEYS,
    classifyStatus,
    FAILURE_POLICY,
    FailureKind,
    FailureReaction,
    onEvent,
    runEveryMinute,
    windowNearlySpent,
} from '../index'
import {
    allLogs,
    AU,
    contact,
    EU,
    errorBody,
    expectEvent,
    expectSearch,
    makeEvent,
    memoryCache,
    OLD_UNIX,
    queuedItem,
    setup,
    TOKEN,
    US,
    useNock,
} from './helpers'

const EMAIL = 'ada@example.com'
const event = (extra = {}) => ({
    event_name: 'signed_up',
    created_at: OLD_UNIX,
    id: 'c1',
    metadata: {},
    ...extra,
})
/** What runEveryMinute reports when it had nothing to do. */
const NOTHING_DRAINED = { delivered: 0, retried: 0, dropped: 0, droppedByReason: {}, remaining: 0 }
const NOW = 1_714_564_800_500
const recent = () => new Date(Date.now() - 1000).toISOString()
const recentUnix = (iso: string) => Math.floor(Date.parse(iso) / 1000)

useNock()
afterEach(() => jest.restoreAllMocks())

describe('skips, with a reason and no call to Intercom', () => {
    test.each<[string, object, object, string]>([
        ['not a triggering event', {}, { event: '$pageview' }, 'not a triggering event'],
        [
            'Intercom echo',
            { triggeringEvents: '[Intercom] event.created' },
            { event: '[Intercom] event.created' },
            'Intercom echo event',
        ],
        ['no email', {}, { properties: {}, distinct_id: 'anon' }, 'no valid email'],
        ['malformed email', {}, { properties: { email: 'ada@' }, distinct_id: 'anon' }, 'no valid email'],
        [
            'ignored domain, any case, subdomain',
            { ignoredEmailDomains: 'example.com' },
            { properties: { email: 'a@Mail.Example.com' } },
            'ignored email domain',
        ],
        ['unreadable timestamp', {}, { timestamp: 'yesterday-ish' }, 'invalid timestamp'],
    ])('%s', async (_name, config, overrides, reason) => {
        const { meta, logs } = await setup(config)
        await expect(onEvent(makeEvent(overrides), meta)).resolves.toEqual({ status: 'skipped', reason })
        expect(logs.filter((line) => line.includes(reason))).toHaveLength(1)
    })

    test('routine skips (events not sent nor synced) are logged once per event name, not once per event', async () => {
        const { meta, logs } = await setup()
        for (let i = 0; i < 5; i++) await onEvent(makeEvent({ event: '$pageview' }), meta)
        await onEvent(makeEvent({ event: '$autocapture' }), meta)
        expect(logs).toEqual([
            'debug: Skipped "$pageview" events: not a triggering event (logged once per event name).',
            'debug: Skipped "$autocapture" events: not a triggering event (logged once per event name).',
        ])
    })

    test('a triggering event without email is logged every time, with its uuid', async () => {
        const { meta, logs } = await setup()
        for (let i = 0; i < 2; i++) await onEvent(makeEvent({ properties: {}, distinct_id: 'anon' }), meta)
        expect(logs).toEqual([
            'info: Skipped event 0190c0de-0000-7000-8000-000000000001: no valid email.',
            'info: Skipped event 0190c0de-0000-7000-8000-000000000001: no valid email.',
        ])
    })
})

describe('delivery', () => {
    test('search by lower-cased email, then POST /events with the contact id and exact headers', async () => {
        const { meta } = await setup({ metadataProperties: 'plan' })
        const headers = {
            authorization: `Bearer ${TOKEN}`,
            accept: 'application/json',
            'intercom-version': '2.11',
            'content-type': 'application/json',
        }
        nock(US, { reqheaders: headers })
            .post('/contacts/search', {
                query: { field: 'email', operator: '=', value: EMAIL },
                pagination: { per_page: 50 },
            })
            .reply(200, { type: 'list', data: [contact('c1')], total_count: 1 })
        nock(US, { reqheaders: headers })
            .post('/events', event({ metadata: { plan: 'pro' } }))
            .reply(202, '')

        const result = await onEvent(
            makeEvent({ properties: { email: ' Ada@Example.COM ', plan: 'pro' } }),
            meta
        )
        expect(result).toEqual({ status: 'delivered' })
    })

    test.each([
        ['US', US],
        ['EU', EU],
        ['AU', AU],
    ])('region %s calls only %s', async (region, host) => {
        const { meta } = await setup({ region }, {}, host)
        expectSearch(EMAIL, [contact('c1')], host)
        expectEvent(event(), 202, host)
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('a lead is addressed by its contact id; a user sharing the email wins over it', async () => {
        const { meta } = await setup({}, { cache: memoryCache() })
        expectSearch(EMAIL, [contact('lead1', 'lead', 10)])
        expectEvent(event({ id: 'lead1' }))
        await onEvent(makeEvent(), meta)

        const other = await setup({}, { cache: memoryCache() })
        expectSearch(EMAIL, [contact('lead1', 'lead', 10), contact('user1', 'user', 1)])
        expectEvent(event({ id: 'user1' }))
        await onEvent(makeEvent(), other.meta)
    })

    test('revenue arrives as a monetary amount and the event name is mapped', async () => {
        const { meta } = await setup({
            triggeringEvents: 'purchase',
            eventNameMapping: 'purchase:purchased',
            metadataProperties: '*',
        })
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(
            event({
                event_name: 'purchased',
                metadata: { revenue: { amount: 1999, currency: 'eur' }, sku: 'A-1' },
            })
        )
        const purchase = makeEvent({
            event: 'purchase',
            properties: { email: EMAIL, revenue: 19.99, currency: 'EUR', sku: 'A-1', $lib: 'web' },
        })
        await expect(onEvent(purchase, meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('the email can come from the person (PostHog current executor)', async () => {
        const { meta } = await setup({}, { person: { properties: { email: EMAIL } } })
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(event())
        await expect(onEvent(makeEvent({ properties: {} }), meta)).resolves.toEqual({ status: 'delivered' })
    })

    test("the email can come from event.person, where PostHog's current executor puts it", async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(event())
        const withPerson = makeEvent({
            properties: {},
            person: { uuid: 'p1', team_id: 1, created_at: '', properties: { email: EMAIL } },
        })
        await expect(onEvent(withPerson, meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('a missing timestamp means now', async () => {
        const { meta } = await setup()
        const before = Math.floor(Date.now() / 1000)
        expectSearch(EMAIL, [contact('c1')])
        let createdAt = 0
        nock(US)
            .post('/events', (body) => ((createdAt = body.created_at), true))
            .reply(202, '')
        await onEvent(makeEvent({ timestamp: undefined }), meta)
        expect(createdAt).toBeGreaterThanOrEqual(before)
        expect(Number.isInteger(createdAt)).toBe(true)
    })
})

describe('contact cache', () => {
    test('in-process (no meta.cache): one search for many events of one email', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').times(3).reply(202, '')
        for (let i = 0; i < 3; i++) await onEvent(makeEvent(), meta)
    })

    test('concurrent events of one email share one search', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').times(5).reply(202, '')
        await Promise.all([...Array(5)].map(() => onEvent(makeEvent(), meta)))
    })

    test('meta.cache is shared by workers, and holds a hash of the email, not the email', async () => {
        const cache = memoryCache()
        const first = await setup({}, { cache })
        const second = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').twice().reply(202, '')
        await onEvent(makeEvent(), first.meta)
        await onEvent(makeEvent(), second.meta)
        expect(cache.written.join(' ')).not.toContain(EMAIL)
    })

    test('an old event for an unknown email is skipped, and "not found" is remembered', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [])
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({
            status: 'skipped',
            reason: 'no Intercom contact',
        })
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({
            status: 'skipped',
            reason: 'no Intercom contact',
        })
    })

    test('a 404 on a cached id: look the email up again and deliver to the new id', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('old')])
        expectEvent(event({ id: 'old' }))
        await onEvent(makeEvent(), meta)

        nock(US)
            .post('/events', event({ id: 'old' }))
            .reply(404, errorBody('not_found', 'User Not Found'))
        expectSearch(EMAIL, [contact('new')])
        expectEvent(event({ id: 'new' }))
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
    })
})

/** PostHog's current executor: no cache, timers. The waits are recorded instead of slept. */
async function executorSetup(): Promise<{
    meta: Awaited<ReturnType<typeof setup>>['meta']
    waits: number[]
}> {
    const { meta } = await setup()
    const waits: number[] = []
    meta.global.sleep = async (ms) => void waits.push(ms)
    return { meta, waits }
}

/** No cache and no timers: a sandboxed runtime whose Redis is missing. */
async function sandboxSetup(): Promise<Awaited<ReturnType<typeof setup>>> {
    const made = await setup()
    made.meta.global.sleep = null
    return made
}

describe('the reaction to each failure kind (FAILURE_POLICY, beside classifyStatus)', () => {
    test.each<[FailureKind, number, FailureReaction]>([
        ['transient', 503, { inPlace: 'again', then: 'park', queued: 'retry' }],
        ['rate_limited', 429, { inPlace: 'wait', then: 'park', queued: 'backoff' }],
        ['auth', 401, { inPlace: null, then: 'report', queued: 'drop' }],
        ['not_found', 404, { inPlace: null, then: 'report', queued: 'drop' }],
        ['invalid', 422, { inPlace: null, then: 'report', queued: 'drop' }],
        ['permanent', 400, { inPlace: null, then: 'report', queued: 'drop' }],
    ])('%s (e.g. %i)', (kind, status, reaction) => {
        expect(classifyStatus(status)).toBe(kind)
        expect(FAILURE_POLICY[kind]).toEqual(reaction)
    })

    test('every kind has a reaction', () => {
        expect(Object.keys(FAILURE_POLICY).sort()).toEqual([
            'auth',
            'invalid',
            'not_found',
            'permanent',
            'rate_limited',
            'transient',
        ])
    })
})

/** POST /events answered 429 with the window resetting at `reset` (Unix seconds). */
function expect429(reset: number): void {
    nock(US)
        .post('/events')
        .reply(429, errorBody('rate_limit_exceeded', 'Exceeded rate limit'), {
            'X-RateLimit-Reset': String(reset),
        })
}

describe('failures without a cache (PostHog current executor): RetryError or a clear error', () => {
    test.each([408, 423, 500, 502, 503, 504])(
        '%i four times → tried again in place after 0.5, 1 and 1.5 s, then RetryError',
        async (status) => {
            const { meta, waits } = await executorSetup()
            expectSearch(EMAIL, [contact('c1')])
            nock(US).post('/events').times(4).reply(status, errorBody('server_error', 'boom'))
            await expect(onEvent(makeEvent(), meta)).rejects.toThrow(RetryError)
            expect(waits).toEqual([500, 1000, 1500])
        }
    )

    test.each([500, 503])(
        'without timers, %i twice → one immediate retry, then RetryError',
        async (status) => {
            const { meta } = await sandboxSetup()
            expectSearch(EMAIL, [contact('c1')])
            nock(US).post('/events').twice().reply(status, errorBody('server_error', 'boom'))
            await expect(onEvent(makeEvent(), meta)).rejects.toThrow(RetryError)
        }
    )

    test('a single 503 is retried in place and delivered', async () => {
        const { meta, waits } = await executorSetup()
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').reply(503, errorBody('service_unavailable', 'down'))
        expectEvent(event())
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
        expect(waits).toEqual([500])
    })

    test.each<[number, RegExp]>([
        [401, /Intercom rejected the API key \(401\)/],
        [403, /Intercom rejected the API key \(403\)/],
        [
            422,
            /Intercom refused event "signed_up" and it will not be retried.*Cannot have more than 120 active event names/,
        ],
        [400, /Intercom refused event "signed_up".*bad <email> value/],
        [501, /Intercom refused event "signed_up"/],
    ])('%i → permanent error, not retried', async (status, message) => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        const text = status === 422 ? 'Cannot have more than 120 active event names' : `bad ${EMAIL} value`
        nock(US).post('/events').reply(status, errorBody('x', text))
        const failure = onEvent(makeEvent(), meta)
        await expect(failure).rejects.toThrow(message)
        await expect(failure).rejects.not.toBeInstanceOf(RetryError)
    })

    test('a dropped connection is retried once at once, then succeeds', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').replyWithError({ code: 'ECONNRESET', message: 'socket hang up' })
        expectEvent(event())
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('two dropped connections → RetryError', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').twice().replyWithError({ code: 'ECONNRESET', message: 'socket hang up' })
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(/RetryError|network error/)
    })

    test('a timeout is not retried at once (it already took 10 s) → RetryError', async () => {
        const timeout: FetchFn = async () => {
            throw Object.assign(new Error('network timeout'), { type: 'request-timeout', name: 'FetchError' })
        }
        let calls = 0
        const counting: FetchFn = (url, init) => ((calls += 1), timeout(url, init))
        const { meta } = await setup()
        meta.fetch = counting
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(RetryError)
        expect(calls).toBe(1)
    })

    test('a recent event of an unknown email is skipped: PostHog retries seconds apart, which cannot outwait the search lag', async () => {
        const { meta } = await setup()
        expectSearch(EMAIL, [])
        await expect(onEvent(makeEvent({ timestamp: recent() }), meta)).resolves.toEqual({
            status: 'skipped',
            reason: 'no Intercom contact',
        })
    })

    test('429: the reset is waited out in place, then the event is sent; the next event waits too', async () => {
        const { meta, waits } = await executorSetup()
        const reset = Math.floor(Date.now() / 1000) + 5
        expectSearch(EMAIL, [contact('c1')])
        expect429(reset)
        expectEvent(event())
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
        expectEvent(event())
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
        expect(waits).toHaveLength(2)
        for (const wait of waits) expect(wait).toBeGreaterThan(3000)
        for (const wait of waits) expect(wait).toBeLessThanOrEqual(5000)
    })

    test('429 with a reset beyond the 12 s bound → RetryError at once, no second call', async () => {
        const { meta, waits } = await executorSetup()
        expectSearch(EMAIL, [contact('c1')])
        expect429(Math.floor(Date.now() / 1000) + 40)
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(/RetryError|backing off/)
        expect(waits).toEqual([])
    })

    test('without timers, 429: back off until X-RateLimit-Reset without calling Intercom, then resume', async () => {
        const { meta } = await sandboxSetup()
        const reset = Math.floor(Date.now() / 1000) + 5
        expectSearch(EMAIL, [contact('c1')])
        expect429(reset)
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(RetryError)
        // Within the window: no call at all (disableNetConnect would fail it).
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(/backing off/)
        expect(meta.global.backoffUntil).toBe(reset * 1000)

        jest.spyOn(Date, 'now').mockReturnValue(reset * 1000 + 1) // the window has passed
        expectEvent(event({ created_at: OLD_UNIX }))
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
    })

    /** One event delivered with the window reported spent (X-RateLimit-Remaining: 0, reset in 8 s). */
    async function spendWindow(meta: Awaited<ReturnType<typeof setup>>['meta']): Promise<void> {
        expectSearch(EMAIL, [contact('c1')])
        nock(US)
            .post('/events')
            .reply(202, '', {
                'X-RateLimit-Remaining': '0',
                'X-RateLimit-Reset': String(Math.floor(Date.now() / 1000) + 8),
            })
        await onEvent(makeEvent(), meta)
    }

    test('a spent window (X-RateLimit-Remaining: 0): the next event waits for the reset, with no 429', async () => {
        const { meta, waits } = await executorSetup()
        await spendWindow(meta)
        expectEvent(event())
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'delivered' })
        expect(waits).toHaveLength(1)
    })

    test('without timers, a spent window (X-RateLimit-Remaining: 0) backs off before a 429 comes', async () => {
        const { meta } = await sandboxSetup()
        await spendWindow(meta)
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(/backing off/)
    })

    test.each<[Record<string, string>, boolean]>([
        [{ 'x-ratelimit-remaining': '0' }, true],
        [{ 'x-ratelimit-remaining': '33', 'x-ratelimit-limit': '1666' }, true],
        [{ 'x-ratelimit-remaining': '34', 'x-ratelimit-limit': '1666' }, false],
        [{ 'x-ratelimit-remaining': '3' }, false],
        [{}, false],
    ])('rate-limit window nearly spent: %p → %p', (headers, spent) => {
        expect(windowNearlySpent(headers)).toBe(spent)
    })

    test.each<[string | null, number]>([
        [null, 10_000],
        ['', 10_000],
        ['soon', 10_000],
        [String(Math.floor(NOW / 1000)), 1000],
        [String(Math.floor(NOW / 1000) + 5), Math.floor(NOW / 1000) * 1000 + 5000 - NOW],
        [String(Math.floor(NOW / 1000) + 3600), 60_000],
    ])('back off until X-RateLimit-Reset %p: %i ms', (header, waitMs) => {
        expect(backoffUntil(header, NOW) - NOW).toBe(waitMs)
    })

    test('plain response objects (PostHog current executor) are read the same way', async () => {
        const reset = Math.floor(Date.now() / 1000) + 7
        const replies: HttpResponse[] = [
            plain(200, { type: 'list', data: [contact('c1')] }),
            plain(429, errorBody('rate_limit_exceeded', 'slow down'), { 'x-ratelimit-reset': String(reset) }),
        ]
        const { meta } = await sandboxSetup()
        meta.fetch = async () => replies.shift()!
        await expect(onEvent(makeEvent(), meta)).rejects.toThrow(RetryError)
        expect(meta.global.backoffUntil).toBe(reset * 1000)
    })
})

function plain(status: number, body: unknown, headers: Record<string, string> = {}): HttpResponse {
    const text = JSON.stringify(body)
    return { status, headers, json: async () => body, text: async () => text }
}

describe('retry queue (plugin-server runtimes, with meta.cache)', () => {
    test('a 503 is queued, not thrown, and runEveryMinute delivers it with the same created_at', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').reply(503, errorBody('service_unavailable', 'down'))
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({ status: 'queued', reason: 'transient' })
        expect(cache.written.join(' ')).not.toContain(EMAIL)

        expectEvent(event())
        await expect(runEveryMinute(meta)).resolves.toEqual({
            delivered: 1,
            retried: 0,
            dropped: 0,
            droppedByReason: {},
            remaining: 0,
        })
        await expect(runEveryMinute(meta)).resolves.toEqual(NOTHING_DRAINED)
    })

    test('an outage queues every event but logs one line per 10 s, not one per event', async () => {
        const cache = memoryCache()
        const { meta, logs } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').times(5).reply(503, errorBody('service_unavailable', 'down'))
        for (let i = 0; i < 5; i++) {
            await expect(onEvent(makeEvent({ uuid: `u${i}` }), meta)).resolves.toMatchObject({
                status: 'queued',
            })
        }
        expect(logs.filter((line) => line.includes('Queued event'))).toEqual([
            expect.stringMatching(
                /^info: Queued event u0 for retry: .*more like it within 10 s are not logged/
            ),
        ])
    })

    test('a 429 is queued; the queue waits for the reset, then drains', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US)
            .post('/events')
            .reply(429, errorBody('rate_limit_exceeded', 'slow'), {
                'X-RateLimit-Reset': String(Math.floor(Date.now() / 1000) + 30),
            })
        await expect(onEvent(makeEvent(), meta)).resolves.toEqual({
            status: 'queued',
            reason: 'rate_limited',
        })
        await expect(runEveryMinute(meta)).resolves.toEqual({
            delivered: 0,
            retried: 0,
            dropped: 0,
            droppedByReason: {},
            remaining: 1,
        })

        meta.global.backoffUntil = 0
        await cache.set(CACHE_KEYS.backoff, 0)
        expectEvent(event())
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1, remaining: 0 })
    })

    test('an event of a new email during backoff is queued too, and resolved when drained', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        meta.global.backoffUntil = Date.now() + 60_000
        await expect(
            onEvent(makeEvent({ properties: { email: 'new@example.com' } }), meta)
        ).resolves.toMatchObject({ status: 'queued' })

        meta.global.backoffUntil = 0
        expectSearch('new@example.com', [contact('n1')])
        expectEvent(event({ id: 'n1' }))
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1 })
    })

    test('a recent event of a contact not yet searchable waits in the queue until Intercom finds it', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        const timestamp = recent()
        expectSearch(EMAIL, [])
        await expect(onEvent(makeEvent({ timestamp }), meta)).resolves.toMatchObject({ status: 'queued' })

        await cache.set(CACHE_KEYS.contact({ kind: 'email', value: EMAIL }), null)
        expectSearch(EMAIL, [contact('c9')])
        expectEvent(event({ id: 'c9', created_at: recentUnix(timestamp) }))
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1, remaining: 0 })
    })

    test('failing items are retried a bounded number of times, then dropped with a reason', async () => {
        const cache = memoryCache()
        const { meta, logs } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').times(10).reply(500, errorBody('server_error', 'boom'))
        await onEvent(makeEvent(), meta)
        const runs = []
        for (let i = 0; i < 10; i++) runs.push(await runEveryMinute(meta))
        expect(runs.map((r) => r.retried).reduce((a, b) => a + b)).toBe(8)
        expect(runs[8]).toEqual({
            delivered: 0,
            retried: 0,
            dropped: 1,
            droppedByReason: { 'still failing after 10 attempts': 1 },
            remaining: 0,
        })
        expect(logs.some((l) => /Dropped queued event .* still failing after 10 attempts/.test(l))).toBe(true)
    })

    test('a permanent failure on retry is dropped at once', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').reply(502, '').post('/events').reply(422, errorBody('x', 'invalid'))
        await onEvent(makeEvent(), meta)
        await expect(runEveryMinute(meta)).resolves.toEqual({
            delivered: 0,
            retried: 0,
            dropped: 1,
            droppedByReason: { 'Intercom answered 422 to POST /events: invalid': 1 },
            remaining: 0,
        })
    })

    test('an item sealed with another API key is dropped, not sent to the wrong workspace', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).post('/events').reply(503, '')
        await onEvent(makeEvent(), meta)
        const rotated = await setup({ intercomApiKey: 'another_token' }, { cache })
        await expect(runEveryMinute(rotated.meta)).resolves.toMatchObject({
            dropped: 1,
            droppedByReason: { 'unreadable (was the API key changed?)': 1 },
        })
    })

    test('more than 1,000 items to requeue are pushed back in chunks PostHog accepts, none dropped', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        const items = [...Array(1500)].map((_, i) =>
            JSON.stringify(queuedItem({ createdAt: OLD_UNIX + i, uuid: `u${i}` }))
        )
        for (let i = 0; i < items.length; i += 500)
            await cache.lpush(CACHE_KEYS.queue, items.slice(i, i + 500))
        await cache.set(CACHE_KEYS.contact({ kind: 'email', value: EMAIL }), 'c1', 60)
        meta.fetch = async () => plain(503, {})
        await expect(runEveryMinute(meta)).resolves.toEqual({
            delivered: 0,
            retried: 1500,
            dropped: 0,
            droppedByReason: {},
            remaining: 1500,
        })
    })

    test('retries set aside by a run whose worker stopped are delivered by the next run', async () => {
        const cache = memoryCache()
        const { meta } = await setup({}, { cache })
        const item = queuedItem({ uuid: 'u-aside', attempts: 2 })
        await cache.lpush(CACHE_KEYS.later, [JSON.stringify(item)])
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(event())
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1, remaining: 0 })
        expect(await cache.llen(CACHE_KEYS.later)).toBe(0)
    })

    test('without a cache, runEveryMinute has nothing to do', async () => {
        const { meta } = await setup()
        await expect(runEveryMinute(meta)).resolves.toEqual(NOTHING_DRAINED)
    })
})

describe('matching by external ID (Intercom user_id / external_id)', () => {
    const BY_ID: PluginConfig = { contactIdentifier: 'external ID', externalId: 'distinct_id' }
    const externalSearch = (value: string, contacts: object[]) =>
        expectSearch(value, contacts, US, 'external_id')
    const noEmail = (extra = {}) => makeEvent({ distinct_id: 'user-42', properties: {}, ...extra })

    test('a user is posted by user_id at once: one call, no search, no email needed', async () => {
        const { meta } = await setup(BY_ID)
        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, user_id: 'user-42', metadata: {} })
        await expect(onEvent(noEmail(), meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('a lead (404 on user_id) is found by external_id and posted by its id; then 1 call an event', async () => {
        const { meta } = await setup(BY_ID, { cache: memoryCache() })
        nock(US)
            .post('/events', {
                event_name: 'signed_up',
                created_at: OLD_UNIX,
                user_id: 'user-42',
                metadata: {},
            })
            .reply(404, errorBody('not_found', 'User Not Found'))
        externalSearch('user-42', [{ type: 'contact', id: 'lead7', role: 'lead', external_id: 'user-42' }])
        expectEvent(event({ id: 'lead7' }))
        await expect(onEvent(noEmail(), meta)).resolves.toEqual({ status: 'delivered' })

        expectEvent(event({ id: 'lead7', created_at: OLD_UNIX + 1 }))
        const next = noEmail({ timestamp: new Date((OLD_UNIX + 1) * 1000).toISOString() })
        await expect(onEvent(next, meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('from a property of the person (PostHog current executor), where the event has none', async () => {
        const { meta } = await setup({
            contactIdentifier: 'external ID',
            externalId: 'property',
            externalIdProperty: 'account_id',
        })
        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, user_id: '991', metadata: {} })
        const withPerson = noEmail({ person: { properties: { account_id: 991 } } } as object)
        await expect(onEvent(withPerson, meta)).resolves.toEqual({ status: 'delivered' })
    })

    test.each<[string, PluginConfig, object, string]>([
        [
            'an anonymous distinct_id is no external ID',
            BY_ID,
            { properties: { $is_identified: false } },
            'no external ID',
        ],
        [
            'no external ID nor email',
            { ...BY_ID, contactIdentifier: 'external ID, else email' },
            { properties: { $is_identified: false } },
            'no external ID nor valid email',
        ],
        [
            'an ignored domain is never sent, whatever identifies the person',
            { ...BY_ID, ignoredEmailDomains: 'example.com' },
            { properties: { email: EMAIL } },
            'ignored email domain',
        ],
    ])('skipped: %s', async (_name, config, overrides, reason) => {
        const { meta } = await setup(config)
        await expect(onEvent(noEmail(overrides), meta)).resolves.toEqual({ status: 'skipped', reason })
    })

    test('"external ID, else email": the email when there is no external ID', async () => {
        const { meta } = await setup({ ...BY_ID, contactIdentifier: 'external ID, else email' })
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(event())
        const anonymous = makeEvent({ properties: { email: EMAIL, $is_identified: false } })
        await expect(onEvent(anonymous, meta)).resolves.toEqual({ status: 'delivered' })
    })

    test('a queued event keeps its external ID, sealed, and is delivered by user_id later', async () => {
        const cache = memoryCache()
        const { meta } = await setup(BY_ID, { cache })
        nock(US).post('/events').reply(503, errorBody('service_unavailable', 'down'))
        await expect(onEvent(noEmail(), meta)).resolves.toEqual({ status: 'queued', reason: 'transient' })
        expect(cache.written.join(' ')).not.toContain('user-42')

        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, user_id: 'user-42', metadata: {} })
        await expect(runEveryMinute(meta)).resolves.toMatchObject({ delivered: 1, dropped: 0 })
    })

    test('an unknown user with creation on: created by external_id, then posted by its id', async () => {
        const { meta } = await setup({ ...BY_ID, createContacts: 'as user' })
        nock(US).post('/events').reply(404, errorBody('not_found', 'User Not Found'))
        externalSearch('user-42', [])
        nock(US)
            .post('/contacts', { role: 'user', external_id: 'user-42' })
            .reply(200, { type: 'contact', id: 'n9', role: 'user' })
        expectEvent(event({ id: 'n9' }))
        await expect(onEvent(noEmail(), meta)).resolves.toEqual({ status: 'delivered' })
    })
})

describe('money and metadata already shaped for Intercom, at the wire', () => {
    test.each<[string, PluginConfig, Record<string, unknown>, object]>([
        [
            'an amount of 0 is sent as a plain number',
            { metadataProperties: 'revenue' },
            { revenue: 0, currency: 'EUR' },
            { revenue: 0 },
        ],
        [
            'a refund (negative) is sent as a plain number',
            { metadataProperties: 'revenue' },
            { revenue: '-5.5', currency: 'EUR' },
            { revenue: -5.5 },
        ],
        [
            'configured revenue and currency properties, with a default currency',
            {
                metadataProperties: 'total,plan',
                revenueProperties: 'total',
                currencyProperty: 'cur',
                defaultCurrency: 'GBP',
            },
            { total: 12.5, plan: 'pro' },
            { total: { amount: 1250, currency: 'gbp' }, plan: 'pro' },
        ],
        [
            "the event's currency wins over the default",
            { metadataProperties: 'revenue', defaultCurrency: 'GBP' },
            { revenue: 3, currency: 'usd' },
            { revenue: { amount: 300, currency: 'usd' } },
        ],
        [
            'a monetary amount and a rich link already shaped are sent as such',
            { metadataProperties: 'price,article' },
            {
                price: { amount: 34999, currency: 'EUR' },
                article: { url: 'https://example.org/ab1de.html', value: 'the dude abides' },
            },
            {
                price: { amount: 34999, currency: 'eur' },
                article: { url: 'https://example.org/ab1de.html', value: 'the dude abides' },
            },
        ],
        [
            'invalid shapes are dropped, not sent as JSON text',
            { metadataProperties: 'a,b,c,ok' },
            {
                a: { amount: 5, currency: 'euro' },
                b: { url: 'javascript:alert(1)', value: 'x' },
                c: { url: 'https://example.org', value: 7 },
                ok: 1,
            },
            { ok: 1 },
        ],
    ])('%s', async (_name, config, properties, metadata) => {
        const { meta } = await setup(config)
        expectSearch(EMAIL, [contact('c1')])
        expectEvent(event({ metadata }))
        await onEvent(makeEvent({ properties: { email: EMAIL, ...properties } }), meta)
    })
})

test('no log line of this suite holds the token or an email', () => {
    const text = allLogs.join('\n')
    expect(allLogs.length).toBeGreaterThan(20)
    expect(text).not.toContain(TOKEN)
    expect(text).not.toMatch(/[a-z0-9.+-]+@[a-z0-9-]+\.[a-z]/i)
})
