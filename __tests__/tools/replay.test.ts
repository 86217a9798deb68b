/**
 * The replay tool end to end: export parsing, dry run (nothing leaves the process), delivery to the emulator,
 * resume from a checkpoint, the retry queue, failures and the CLI. The emulator runs on loopback inside the
 * test; every other connection is refused by nock.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import nock from 'nock'

import { Emulator, SeedContact, startEmulator, StoredEvent } from '../../tools/emulator'
import { FetchFn, FetchInit, hostNodeFetch } from '../../tools/load-plugin'
import { createBoundedStore } from '../../tools/replay-cache'
import { readCheckpoint } from '../../tools/replay-checkpoint'
import {
    dryRunFetch,
    intercomOnlyFetch,
    maskEmail,
    rateLimitPause,
    redact,
    routeOf,
} from '../../tools/replay-fetch'
import { InputRecord, normalizeTimestamp, openInput, Position, toExportRow } from '../../tools/replay-input'
import { Pacer, Slots } from '../../tools/replay-pace'
import { countQueueDrop } from '../../tools/replay-run'
import { Tally } from '../../tools/replay-report'
import {
    checkToken,
    main,
    exitCode,
    formatSummary,
    parseCli,
    replay,
    ReplayOptions,
    ReplaySummary,
    USAGE,
} from '../../tools/replay'

const FIXTURES = path.join(__dirname, '..', 'fixtures', 'replay')
const fixture = (name: string): string => path.join(FIXTURES, name)
const CONFIG: Record<string, string> = JSON.parse(readFileSync(fixture('config.json'), 'utf8'))
const CONTACTS: SeedContact[] = JSON.parse(readFileSync(fixture('contacts.json'), 'utf8'))
const FORMATS = ['events.jsonl', 'events.jsonl.gz', 'events.csv']

/** What the fixtures must become in Intercom: name, created_at, contact email, metadata. */
const EXPECTED_EVENTS = [
    ['signed_up', 1714564800, 'ada@example.com', { plan: 'pro' }],
    ['purchase', 1714565100, 'ada@example.com', { plan: 'pro', revenue: { amount: 1999, currency: 'eur' } }],
    ['identified', 1714565400, 'grace@example.org', {}],
    ['signed_up', 1714636800, 'linus@example.net', { plan: 'free' }], // email only in person_properties
    ['purchase', 1714638600, 'linus@example.net', { revenue: { amount: 1500, currency: 'jpy' } }],
]
const EXPECTED_SKIPS = { 'not a triggering event': 1, 'no valid email': 1, 'ignored email domain': 1 }

let workDir: string
const emulators: Emulator[] = []

beforeAll(() => {
    nock.disableNetConnect()
    nock.enableNetConnect('127.0.0.1')
    workDir = mkdtempSync(path.join(tmpdir(), 'replay-test-'))
})
afterEach(async () => {
    await Promise.all(emulators.splice(0).map((emulator) => emulator.close()))
})
afterAll(() => {
    nock.enableNetConnect()
    rmSync(workDir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------------------------------
// Factory
// ---------------------------------------------------------------------------------------------------

async function emulatorWith(options: Parameters<typeof startEmulator>[0] = {}): Promise<Emulator> {
    const emulator = await startEmulator({ contacts: CONTACTS, ...options })
    emulators.push(emulator)
    return emulator
}

interface Run {
    summary: ReplaySummary
    printed: string[]
    notices: string[]
    logs: string[]
}

/** One replay with fast test settings; everything it prints is captured. */
async function run(overrides: Partial<ReplayOptions> & Pick<ReplayOptions, 'target'>): Promise<Run> {
    const printed: string[] = []
    const notices: string[] = []
    const logs: string[] = []
    const summary = await replay({
        file: fixture('events.jsonl'),
        config: CONFIG,
        checkpoint: false,
        progress: false,
        rate: 1000,
        maxCallsPerSecond: 1000,
        drainIntervalMs: 20,
        drainRounds: 10,
        retryDelayScale: 0.001,
        print: (line) => printed.push(line),
        notice: (line) => notices.push(line),
        onLog: (level, text) => logs.push(`${level}: ${text}`),
        ...overrides,
    })
    return { summary, printed, notices, logs }
}

/** The emulator's events as [name, created_at, email, metadata], in time order. */
function stored(emulator: Emulator): unknown[][] {
    const emails = new Map(emulator.contacts().map((contact) => [contact.id, contact.email]))
    return emulator
        .events()
        .sort((a, b) => a.created_at - b.created_at || a.event_name.localeCompare(b.event_name))
        .map((event) => [event.event_name, event.created_at, emails.get(event.contact_id), event.metadata])
}

async function readAll(file: string, resumeAt?: Position): Promise<InputRecord[]> {
    const input = openInput(file, file.includes('.csv') ? 'csv' : 'jsonl', resumeAt)
    const records: InputRecord[] = []
    for await (const record of input.records) records.push(record)
    input.close()
    return records
}

/** A fetch that fails the test if anything calls it. */
function forbiddenFetch(): jest.Mock<ReturnType<FetchFn>, Parameters<FetchFn>> {
    return jest.fn<ReturnType<FetchFn>, Parameters<FetchFn>>(() => {
        throw new Error('the network was called')
    })
}

interface FailedRequest {
    method: string
    path: string
    createdAt?: number
    /** 1 for the first request with this method, path and created_at, and so on. */
    attempt: number
}

/**
 * Answers the requests `fails` picks with `status` (or the status it returns) and `headers`; everything else
 * reaches the emulator. Keyed on the request's content (not on call order), so a background drain retrying
 * meanwhile cannot change which requests fail.
 */
function failing(
    fails: (request: FailedRequest) => boolean | number | undefined,
    status = 503,
    headers: () => Record<string, string> = () => ({})
): FetchFn {
    const attempts = new Map<string, number>()
    return (input: string | URL, init?: FetchInit) => {
        const method = init?.method ?? 'GET'
        const path = new URL(String(input)).pathname
        const createdAt =
            method === 'POST' && path === '/events'
                ? Number(JSON.parse(init?.body ?? '{}').created_at)
                : undefined
        const key = `${method} ${path} ${createdAt}`
        const attempt = (attempts.get(key) ?? 0) + 1
        attempts.set(key, attempt)
        const verdict = fails({ method, path, createdAt, attempt })
        if (verdict === true || typeof verdict === 'number') {
            const body = JSON.stringify({ type: 'error.list', errors: [{ code: 'x', message: 'refused' }] })
            const answer = typeof verdict === 'number' ? verdict : status
            return Promise.resolve(new Response(body, { status: answer, headers: headers() }))
        }
        return hostNodeFetch(input, init)
    }
}

/** POST /events of these created_at values fail on their first attempt. */
const firstPostOf =
    (...createdAts: number[]) =>
    (request: FailedRequest): boolean =>
        request.path === '/events' && request.attempt === 1 && createdAts.includes(request.createdAt ?? -1)

/** A JSON Lines export of `count` signed_up events, one new person each. */
function generatedExport(count: number): string {
    const file = path.join(workDir, `generated-${count}.jsonl`)
    const lines = Array.from({ length: count }, (_, i) =>
        JSON.stringify({
            uuid: `gen-${i}`,
            event: 'signed_up',
            distinct_id: `person-${i}`,
            properties: { email: `person${i}@example.com`, plan: 'pro' },
            timestamp: new Date(Date.UTC(2024, 4, 1) + i * 1000).toISOString(),
        })
    )
    writeFileSync(file, `${lines.join('\n')}\n`)
    return file
}

// ---------------------------------------------------------------------------------------------------
// Reading exports
// ---------------------------------------------------------------------------------------------------

describe('reading exports', () => {
    test('JSON Lines, gzip and CSV give the same events', async () => {
        const [jsonl, gzip, csv] = await Promise.all(FORMATS.map((name) => readAll(fixture(name))))
        const rows = (records: InputRecord[]) =>
            records.map(({ row }) => row && { ...row, team_id: undefined, person_id: undefined })
        expect(jsonl).toHaveLength(8)
        expect(rows(gzip)).toEqual(rows(jsonl))
        expect(rows(csv)).toEqual(rows(jsonl))
    })

    test('properties and person_properties as JSON text, ClickHouse timestamps as ISO UTC', async () => {
        const [, purchase, , , linus] = (await readAll(fixture('events.jsonl'))).map((record) => record.row)
        expect(purchase).toMatchObject({
            event: 'purchase',
            properties: { email: 'ada@example.com', revenue: 19.99, currency: 'EUR' },
            person_properties: { email: 'ada@example.com' },
            timestamp: '2024-05-01T12:05:00.123Z',
            team_id: 2,
        })
        expect(linus).toMatchObject({
            properties: { plan: 'free' },
            person_properties: { email: 'linus@example.net' },
        })
    })

    test('each record knows its lines and byte offsets; a blank line is skipped but counted', async () => {
        const bytes = readFileSync(fixture('events.jsonl'))
        const records = await readAll(fixture('events.jsonl'))
        expect(records.map((record) => record.after.line)).toEqual([1, 2, 3, 5, 6, 7, 8, 9])
        expect(records[3].before).toEqual({ line: 4, offset: records[3].before.offset })
        for (const { before, after, row } of records) {
            const text = bytes.subarray(before.offset, after.offset).toString('utf8')
            expect(JSON.parse(text).uuid).toBe(row?.uuid)
        }
        expect((await readAll(fixture('events.jsonl.gz')))[0].after.offset).toBeUndefined()
    })

    test.each(FORMATS)('%s resumes after a given line', async (name) => {
        const all = await readAll(fixture(name))
        const rest = await readAll(fixture(name), all[2].after)
        expect(rest.map((record) => record.row?.uuid)).toEqual(all.slice(3).map((record) => record.row?.uuid))
    })

    test.each([
        ['2024-05-01 12:05:00.123456', '2024-05-01T12:05:00.123Z'],
        ['2024-05-01 12:05:00', '2024-05-01T12:05:00.000Z'],
        ['2024-05-01T12:05:00+02:00', '2024-05-01T12:05:00+02:00'],
        [1714565100, '1714565100'],
        ['', undefined],
        [null, undefined],
    ])('timestamp %p → %p', (input, expected) => {
        expect(normalizeTimestamp(input)).toBe(expected)
    })

    test.each([
        [['array'], 'not a JSON object'],
        [{ distinct_id: 'x' }, 'no event name'],
        [{ event: 'e', properties: '{broken' }, 'properties is not a JSON object'],
        [{ event: 'e', person_properties: '[1]' }, 'person_properties is not a JSON object'],
    ])('refuses %j: %s', (raw, reason) => {
        expect(toExportRow(raw)).toBe(reason)
    })
})

// ---------------------------------------------------------------------------------------------------
// Dry run
// ---------------------------------------------------------------------------------------------------

describe('dry run', () => {
    test('prints what would be sent, masked, and no request leaves the process', async () => {
        const fetch = forbiddenFetch()
        const checkpoint = path.join(workDir, 'dry-run-checkpoint.json')
        const { summary, printed, notices, logs } = await run({
            target: { kind: 'dry-run' },
            fetch,
            checkpoint,
        })

        expect(fetch).not.toHaveBeenCalled()
        expect(printed).toEqual([
            expect.stringMatching(
                /^line 1: POST \/events "signed_up" created_at 1714564800 \(2024-05-01T12:00:00Z\) contact a\*\*\*@example\.com metadata: plan$/
            ),
            expect.stringMatching(
                /^line 2: .*"purchase" created_at 1714565100 .* a\*\*\*@example\.com metadata: plan, revenue$/
            ),
            expect.stringMatching(
                /^line 5: .*"identified" created_at 1714565400 .* g\*\*\*@example\.org metadata: \(none\)$/
            ),
            expect.stringMatching(
                /^line 6: .*"signed_up" created_at 1714636800 .* l\*\*\*@example\.net metadata: plan$/
            ),
            expect.stringMatching(
                /^line 7: .*"purchase" created_at 1714638600 .* l\*\*\*@example\.net metadata: revenue$/
            ),
        ])
        expect(summary).toMatchObject({
            target: 'dry-run',
            rowsRead: 8,
            delivered: 5,
            skipped: EXPECTED_SKIPS,
            failed: {},
        })
        expect(summary.intercomCalls.byRoute).toEqual({
            'GET /me': 1,
            'POST /contacts/search': 3,
            'POST /events': 5,
        })
        const everything = [...printed, ...notices, ...logs, formatSummary(summary)].join('\n')
        expect(everything).not.toMatch(/(ada|grace|linus|staff)@/i)
        expect(() => readFileSync(checkpoint)).toThrow() // a dry run never writes the checkpoint
    })

    test('unreadable rows fail, rows without a timestamp are skipped', async () => {
        const { summary } = await run({
            target: { kind: 'dry-run' },
            file: fixture('broken.jsonl'),
            config: { triggeringEvents: 'signed_up' },
        })
        expect(summary).toMatchObject({
            rowsRead: 6,
            delivered: 1,
            skipped: { 'no timestamp in the export': 1 },
            failed: {
                'unreadable row: not valid JSON': 1,
                'unreadable row: no event name': 1,
                'unreadable row: properties is not a JSON object': 1,
                'unreadable row: not a JSON object': 1,
            },
        })
        expect(exitCode(summary)).toBe(1)
    })
})

// ---------------------------------------------------------------------------------------------------
// Emulator
// ---------------------------------------------------------------------------------------------------

describe('emulator', () => {
    test.each(FORMATS)('%s: the expected events reach Intercom, once each', async (name) => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            file: fixture(name),
            target: { kind: 'emulator', emulator, deriveContacts: false },
        })

        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
        expect(emulator.events().every((event: StoredEvent) => event.received === 1)).toBe(true)
        expect(summary).toMatchObject({
            rowsRead: 8,
            delivered: 5,
            skipped: EXPECTED_SKIPS,
            failed: {},
            complete: true,
        })
        expect(summary.intercomCalls.byRoute['POST /events']).toBe(5)
        expect(summary.intercomCalls.total).toBe(emulator.stats().calls)
        expect(exitCode(summary)).toBe(0)
    })

    test('an emulator of its own, with a contact for each email of the file', async () => {
        const { summary } = await run({ target: { kind: 'emulator' }, config: { ...CONFIG, region: 'EU' } })
        expect(summary.emulator).toMatchObject({ eventsStored: 5, deduplicated: 0 })
        expect(summary.delivered).toBe(5)
    })

    test('events refused by Intercom fail with its message, and the exit code says so', async () => {
        const emulator = await emulatorWith({ maxEventNames: 1 })
        // One at a time, so that signed_up is the event name that takes the only slot.
        const { summary } = await run({ target: { kind: 'emulator', emulator }, concurrency: 1 })
        const refused = (name: string) =>
            `Intercom refused event "${name}" and it will not be retried. Intercom answered 422 to POST /events: Cannot have more than 1 active event names`
        expect(summary.failed).toEqual({ [refused('purchase')]: 2, [refused('identified')]: 1 })
        expect(summary.delivered).toBe(2)
        expect(exitCode(summary)).toBe(1)
        expect(formatSummary(summary)).toMatch(/failed\s+3/)
    })
})

// ---------------------------------------------------------------------------------------------------
// Checkpoint and resume
// ---------------------------------------------------------------------------------------------------

describe('checkpoint and resume', () => {
    test.each(FORMATS)('%s: a limited run, then a resumed one, deliver every event once', async (name) => {
        const emulator = await emulatorWith()
        const checkpoint = path.join(workDir, `${name}.checkpoint.json`)
        const target = { kind: 'emulator', emulator, deriveContacts: false } as const
        const file = fixture(name)

        const first = await run({ file, target, checkpoint, checkpointEvery: 1, limit: 3 })
        expect(first.summary).toMatchObject({ rowsRead: 3, delivered: 2, complete: false })
        expect(readCheckpoint(checkpoint)).toMatchObject({
            line: name === 'events.csv' ? 4 : 3,
            complete: false,
        })

        const second = await run({ file, target, checkpoint })
        expect(second.notices).toEqual([expect.stringMatching(/^Resuming after line [34] /)])
        expect(second.summary).toMatchObject({ rowsRead: 5, delivered: 3, complete: true })
        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
        expect(emulator.events().every((event) => event.received === 1)).toBe(true)
        expect(readCheckpoint(checkpoint)).toMatchObject({
            complete: true,
            counts: { rows: 8, delivered: 5, skipped: 3 },
        })

        const third = await run({ file, target, checkpoint })
        expect(third.summary.rowsRead).toBe(0)
        expect(third.notices[0]).toMatch(/replayed completely already/)
    })

    test('after a crash only the lines in flight are sent again, and Intercom counts them once', async () => {
        const file = generatedExport(40)
        const emulator = await emulatorWith({ latencyMs: 5 })
        const checkpoint = path.join(workDir, 'crash.checkpoint.json')
        const target = { kind: 'emulator', emulator } as const
        const controller = new AbortController()
        // A crash at the moment Intercom stores the 12th event leaves the checkpoint as it is then on disk.
        let onDisk = ''
        const stopWatching = emulator.onRequest((request) => {
            if (request.path !== '/events' || emulator.events().length !== 12) return
            onDisk = readFileSync(checkpoint, 'utf8')
            controller.abort()
        })
        const first = await run({ file, target, checkpoint, signal: controller.signal, checkpointEvery: 1 })
        stopWatching()
        expect(first.summary).toMatchObject({ interrupted: true, complete: false })
        writeFileSync(checkpoint, onDisk)
        const crashedAt = readCheckpoint(checkpoint)?.line ?? 0
        expect(crashedAt).toBeGreaterThanOrEqual(12 - 4)

        const second = await run({ file, target, checkpoint })
        expect(second.summary).toMatchObject({ complete: true, rowsRead: 40 - crashedAt })
        const events = emulator.events()
        expect(events).toHaveLength(40)
        const resent = events.reduce((sum, event) => sum + event.received - 1, 0)
        expect(resent).toBe(emulator.stats().eventsDeduplicated)
        // The 12th event was stored but not yet finished when "the process died": it is sent again, as are at
        // most the other events then in flight, and Intercom counts each once.
        expect(resent).toBeGreaterThanOrEqual(1)
        expect(resent).toBeLessThanOrEqual(4)
    })

    test('a checkpoint of another file is refused, unless --restart', async () => {
        const checkpoint = path.join(workDir, 'other.checkpoint.json')
        const emulator = await emulatorWith()
        await run({
            target: { kind: 'emulator', emulator },
            file: fixture('events.csv'),
            checkpoint,
            limit: 2,
        })
        await expect(run({ target: { kind: 'emulator', emulator }, checkpoint })).rejects.toThrow(/--restart/)
        const restarted = await run({ target: { kind: 'emulator', emulator }, checkpoint, restart: true })
        expect(restarted.summary.rowsRead).toBe(8)
    })
})

// ---------------------------------------------------------------------------------------------------
// Retry queue and rate limits
// ---------------------------------------------------------------------------------------------------

describe('retry queue and rate limits', () => {
    test('events queued after a 503 are delivered by runEveryMinute before the replay ends', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            fetch: failing(firstPostOf(1714564800, 1714565100), 503), // Ada's two
        })
        expect(summary).toMatchObject({
            queued: 2,
            queue: { delivered: 2, dropped: 0, left: 0 },
            delivered: 5,
            failed: {},
        })
        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
    })

    test('a 429 holds the replay until the window resets; the refused event is delivered later', async () => {
        const emulator = await emulatorWith()
        // X-RateLimit-Reset is in whole seconds: +2 puts the reset 1 to 2 s ahead.
        const reset = () => ({ 'x-ratelimit-reset': String(Math.floor(Date.now() / 1000) + 2) })
        const started = Date.now()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            fetch: failing(firstPostOf(1714564800), 429, reset),
            concurrency: 1, // nothing else in flight when the 429 comes
            drainRounds: 200,
        })
        expect(Date.now() - started).toBeGreaterThanOrEqual(1000)
        // Held back by the replay, the other events did not pile up in the plugin's queue behind the backoff.
        expect(summary).toMatchObject({
            queued: 1,
            queue: { delivered: 1, left: 0 },
            delivered: 5,
            failed: {},
        })
        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
    })

    test('a RetryError from onEvent is retried as PostHog retried it, then the event goes through', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            // Contact sync of Grace's $identify: its first PUT fails, and a sync failure is raised as a RetryError.
            config: { ...CONFIG, contactSync: 'update existing contacts' },
            fetch: failing((request) => request.method === 'PUT' && request.attempt === 1, 503),
        })
        expect(summary).toMatchObject({ retried: 1, delivered: 5, failed: {} })
        expect(emulator.contacts().find((contact) => contact.email === 'grace@example.org')?.name).toBe(
            'Grace'
        )
    })

    test('an event the queue gives up is counted with the reason the plugin logged', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            // Ada's signup: 503 at first (queued), then 422 on the retry (dropped for good).
            fetch: failing((request) => request.createdAt === 1714564800 && [503, 422][request.attempt - 1]),
        })
        expect(summary).toMatchObject({
            queued: 1,
            queue: { delivered: 0, dropped: 1, left: 0 },
            delivered: 4,
        })
        expect(summary.failed).toEqual({
            'dropped from the retry queue: Intercom answered 422 to POST /events: refused': 1,
        })
        expect(exitCode(summary)).toBe(1)
    })

    test.each([
        ['info', 'Dropped queued event u1: no Intercom contact.', { skipped: { 'no Intercom contact': 1 } }],
        [
            'error',
            'Dropped queued event u2: still failing after 10 attempts.',
            { failed: { 'dropped from the retry queue: still failing after 10 attempts': 1 } },
        ],
        [
            'error',
            'Retry queue is full or unavailable: dropped 3 events.',
            { failed: { 'dropped: retry queue full or unavailable': 3 } },
        ],
        ['info', 'Queued event u3 for retry: Intercom answered 503', { skipped: {}, failed: {} }],
    ])("the plugin's %s line %p is counted", (level, line, expected) => {
        const tally = new Tally()
        countQueueDrop(tally, level, line)
        expect(tally).toMatchObject(expected)
    })

    test('what the queue cannot deliver in the bounded drain is reported as failed', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            fetch: failing((request) => request.path === '/events', 503),
            // Few enough tries that the plugin's queue (10 attempts) keeps them: none is dropped meanwhile.
            drainIntervalMs: 200,
            drainRounds: 2,
        })
        expect(summary.delivered).toBe(0)
        expect(summary.queue.left).toBe(5)
        expect(summary.failed).toEqual({
            'still in the retry queue when the replay ended (sent again on resume)': 5,
        })
        expect(exitCode(summary)).toBe(1)
    })

    test.each([
        [429, {}, 10_000],
        [429, { 'x-ratelimit-reset': '1700000005' }, 5_000],
        [
            200,
            { 'x-ratelimit-remaining': '16', 'x-ratelimit-limit': '1666', 'x-ratelimit-reset': '1700000003' },
            3_000,
        ],
        [200, { 'x-ratelimit-remaining': '17', 'x-ratelimit-limit': '1666' }, null],
        [429, { 'x-ratelimit-reset': '1700009999' }, 60_000],
    ])('status %p with %j pauses for %p ms', (status, headers, pause) => {
        const now = 1_700_000_000_000
        const result = rateLimitPause(status, new Headers(headers), now)
        expect(result === null ? null : result - now).toBe(pause)
    })

    test('the pacer spaces starts out and honours a pause; slots bound the work in flight', async () => {
        const pacer = new Pacer(100)
        const started = Date.now()
        await Promise.all(Array.from({ length: 5 }, () => pacer.take()))
        expect(Date.now() - started).toBeGreaterThanOrEqual(35)
        pacer.pauseUntil(Date.now() + 60)
        const paused = Date.now()
        await pacer.take()
        expect(Date.now() - paused).toBeGreaterThanOrEqual(55)

        const slots = new Slots(2)
        let active = 0
        let peak = 0
        await Promise.all(
            Array.from({ length: 6 }, async () => {
                await slots.acquire()
                peak = Math.max(peak, ++active)
                await new Promise((resolve) => setTimeout(resolve, 5))
                active--
                slots.release()
            })
        )
        expect(peak).toBe(2)
    })
})

describe('the cache under meta.cache', () => {
    test('caps string keys, least recently used out, and never evicts the retry queue', async () => {
        let clock = 0
        const store = createBoundedStore(2, () => clock)
        await store.lpush('queue', ['a', 'b'])
        await store.set('one', '1', 10)
        await store.set('two', '2')
        expect(await store.get('one')).toBe('1') // now the most recently used
        await store.set('three', '3')
        expect([await store.get('one'), await store.get('two'), await store.get('three')]).toEqual([
            '1',
            null,
            '3',
        ])
        expect(await store.llen('queue')).toBe(2)
        clock = 10_000
        expect(await store.get('one')).toBeNull() // its 10 s are up
        expect(await store.lpop('queue', 5)).toEqual(['b', 'a']) // LPUSH puts each value at the head, as Redis does
    })
})

// ---------------------------------------------------------------------------------------------------
// The real Intercom: host guard and token hygiene
// ---------------------------------------------------------------------------------------------------

describe('the real Intercom', () => {
    const TOKEN = 'tok_SECRET_9f8e7d6c'

    test("only the configured region's host is called, and the token is never printed", async () => {
        const calls: string[] = []
        const intercom = dryRunFetch(() => undefined) // stands in for the network: it answers like Intercom
        const network: FetchFn = (input, init) => {
            calls.push(String(input))
            return intercom(input, init)
        }
        const { summary, notices, logs, printed } = await run({
            target: { kind: 'intercom' },
            config: { ...CONFIG, intercomApiKey: TOKEN, region: 'EU' },
            fetch: network,
        })
        expect(summary.delivered).toBe(5)
        expect(calls.length).toBe(summary.intercomCalls.total)
        expect(calls.every((url) => url.startsWith('https://api.eu.intercom.io/'))).toBe(true)
        expect([...notices, ...logs, ...printed, formatSummary(summary)].join('\n')).not.toContain(TOKEN)
    })

    test.each([
        'http://api.intercom.io/me',
        'https://api.intercom.io/me',
        'https://evil.example/me',
        'https://api.eu.intercom.io:8443/me',
    ])('refuses %s when the region is EU', async (url) => {
        const base = forbiddenFetch()
        await expect(intercomOnlyFetch('api.eu.intercom.io', base)(url, {})).rejects.toThrow(/Refused/)
        expect(base).not.toHaveBeenCalled()
    })

    test.each([
        'https://api.intercom.io/?token=abc123',
        'Bearer abc123',
        'abc 123',
        'user:abc123@host',
        'www.abc123',
        '',
    ])('refuses the token %p without repeating it', (token) => {
        let message = ''
        try {
            checkToken(token)
        } catch (error) {
            message = (error as Error).message
        }
        expect(message).toMatch(/token/i)
        expect(message).not.toContain('abc123')
    })

    test('accepts a bare token (base64 may hold / + =)', () => {
        expect(() => checkToken('dG9rOjE2YzU/ZTQ+MjE=')).not.toThrow()
    })

    test('redact masks emails and the token in any text', () => {
        expect(redact(`to ada@example.com with ${TOKEN}`, TOKEN)).toBe('to a***@example.com with [token]')
        expect(maskEmail('x@y.io')).toBe('x***@y.io')
        expect(routeOf('put', 'https://api.intercom.io/contacts/abc123')).toBe('PUT /contacts/{id}')
        expect(routeOf('POST', 'https://api.intercom.io/contacts/search')).toBe('POST /contacts/search')
    })
})

// ---------------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------------

describe('CLI', () => {
    /** main() with stdout and stderr captured. */
    async function runMain(argv: string[]): Promise<{ code: number; out: string; err: string }> {
        const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true)
        const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true)
        try {
            const code = await main(argv)
            const text = (spy: typeof stdout) => spy.mock.calls.map(([chunk]) => String(chunk)).join('')
            return { code, out: text(stdout), err: text(stderr) }
        } finally {
            stdout.mockRestore()
            stderr.mockRestore()
        }
    }

    test.each([
        [['--file', 'events.csv', '--config', 'config.json', '--dry-run'], 0, /rows read\s+8/],
        [
            ['--file', 'broken.jsonl', '--events', 'signed_up', '--dry-run'],
            1,
            /unreadable row: not valid JSON/,
        ],
        [['--file', 'events.jsonl', '--dry-run'], 2, /Triggering events is empty/],
        [['--file', 'events.jsonl', '--events', 'x'], 2, /No Intercom token: set INTERCOM_API_KEY/],
        [['--file', 'missing.jsonl', '--events', 'x', '--dry-run'], 2, /No such file: .*missing\.jsonl/],
        [['--help'], 0, /^Usage: npm run replay/],
    ])('main %j exits %p', async (argv, code, message) => {
        const withPaths = argv.map((arg) => (/\.(jsonl|csv|json)$/.test(arg) ? fixture(arg) : arg))
        const checkpoint = ['--checkpoint', path.join(workDir, 'main.checkpoint.json'), '--no-progress']
        const result = await runMain([...withPaths, ...checkpoint])
        expect(result.code).toBe(code)
        expect(code === 2 ? result.err : result.out).toMatch(message)
    })

    const files: Record<string, string> = {
        'config.json': JSON.stringify({ triggeringEvents: 'a', region: 'AU', metadataProperties: 'm' }),
    }
    const read = (file: string): string => files[file] ?? readFileSync(file, 'utf8')
    const env = { INTERCOM_API_KEY: 'env-token', INTERCOM_REGION: 'EU' }

    test('flags override --config, which overrides the environment', () => {
        const { options } = parseCli(
            [
                '--file',
                'e.jsonl',
                '--config',
                'config.json',
                '--events',
                'signed_up,purchase',
                '--map',
                '$identify:identified',
                '--set',
                'contactSync=create or update contacts',
                '--rate',
                '50',
                '--no-progress',
            ],
            env,
            read
        )
        expect(options.config).toEqual({
            intercomApiKey: 'env-token',
            region: 'AU',
            triggeringEvents: 'signed_up,purchase',
            metadataProperties: 'm',
            eventNameMapping: '$identify:identified',
            contactSync: 'create or update contacts',
        })
        expect(options).toMatchObject({ target: { kind: 'intercom' }, rate: 50, progress: false })
    })

    test('targets', () => {
        expect(parseCli(['--file', 'f', '--dry-run'], {}, read).options.target).toEqual({ kind: 'dry-run' })
        const seeded = parseCli(
            ['--file', 'f', '--emulator', '--seed-contacts', fixture('contacts.json')],
            {},
            read
        )
        expect(seeded.options.target).toMatchObject({ kind: 'emulator', seedContacts: CONTACTS })
    })

    test.each([
        [['--events', 'x'], /--file is required/],
        [['--file', 'f', '--dry-run', '--emulator'], /one of --dry-run and --emulator/],
        [['--file', 'f', '--set', 'triggeringEvent=x'], /not a plugin.json key/],
        [['--file', 'f', '--rate', 'fast'], /--rate needs a number/],
        [['--file', 'f', '--format', 'xml'], /jsonl or csv/],
        [['--file', 'f', '--nope'], /Unknown option/],
    ])('%j is refused', (argv, message) => {
        expect(() => parseCli(argv, {}, read)).toThrow(message)
    })

    test('the usage names every flag', () => {
        expect(parseCli(['--help'], {}, read).help).toBe(true)
        const flags = [
            '--file',
            '--format',
            '--emulator',
            '--seed-contacts',
            '--dry-run',
            '--token',
            '--region',
            '--events',
        ]
        for (const flag of [
            ...flags,
            '--metadata',
            '--map',
            '--config',
            '--set',
            '--limit',
            '--rate',
            '--concurrency',
            '--checkpoint',
            '--restart',
            '--no-progress',
            '--verbose',
        ]) {
            expect(USAGE).toContain(flag)
        }
    })
})
