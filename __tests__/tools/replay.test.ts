/** The replay tool end to end, from export files to the emulator.
 *
 * Export formats, dry run (nothing leaves the process), delivery to the emulator,
 * checkpoints keyed by target and config, failed events retried by the next run, many files, and the rate-limit
 * gate. The emulator runs on loopback inside the test; every other connection is refused by nock.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import { brotliCompressSync } from 'node:zlib'
import nock from 'nock'

import { Emulator, SeedContact, startEmulator, StoredEvent } from '../../tools/intercom/emulator'
import { FetchFn, FetchInit, hostNodeFetch, redirectingFetch } from '../../tools/runtime/load-plugin'
import { checkToken, exitCode, formatSummary, replay, ReplayOptions, ReplaySummary } from '../../tools/replay'
import { FailedEvent } from '../../tools/replay/checkpoint'
import {
    dryRunFetch,
    intercomOnlyFetch,
    maskEmail,
    redact,
    routeOf,
    WindowGate,
} from '../../tools/replay/fetch'
import { detectInput, expandInputs, InputRecord, openInput } from '../../tools/replay/input'
import { Slots } from '../../tools/lib/slots'
import { Pacer } from '../../tools/replay/pace'
import { csvValue, normalizeTimestamp, toExportRow, unflattenColumns } from '../../tools/replay/rows'

const FIXTURES = path.join(__dirname, '..', 'fixtures', 'replay')
const EXAMPLES = path.join(__dirname, '..', '..', 'tools', 'replay', 'examples')
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
}

let dirs = 0
/** A fresh checkpoint folder. */
const checkpointDir = (): string => path.join(workDir, `checkpoints-${++dirs}`)

/** One replay with fast test settings; everything it prints is captured. */
async function run(overrides: Partial<ReplayOptions> & Pick<ReplayOptions, 'target'>): Promise<Run> {
    const printed: string[] = []
    const notices: string[] = []
    const summary = await replay({
        inputs: [fixture('events.jsonl')],
        config: CONFIG,
        checkpointDir: false,
        progress: false,
        retryDelayScale: 0.001,
        print: (line) => printed.push(line),
        notice: (line) => notices.push(line),
        ...overrides,
    })
    return { summary, printed, notices }
}

/** The emulator's events as [name, created_at, email, metadata], in time order. */
function stored(emulator: Emulator): unknown[][] {
    const emails = new Map(emulator.contacts().map((contact) => [contact.id, contact.email]))
    return emulator
        .events()
        .sort((a, b) => a.created_at - b.created_at || a.event_name.localeCompare(b.event_name))
        .map((event) => [event.event_name, event.created_at, emails.get(event.contact_id), event.metadata])
}

async function readAll(file: string): Promise<InputRecord[]> {
    const input = openInput(file, detectInput(file))
    const records: InputRecord[] = []
    for await (const record of input.records) records.push(record)
    input.close()
    return records
}

function failedFile(summary: ReplaySummary, index = 0): FailedEvent[] {
    const file = summary.files[index].failedFile
    if (!file) throw new Error('no failed-events file')
    return readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as FailedEvent)
}

/** A JSON Lines export of `count` signed_up events, one new person each. */
function generatedExport(count: number, name = `generated-${count}.jsonl`): string {
    const file = path.join(workDir, name)
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

/** A fetch that fails the test if anything calls it. */
function forbiddenFetch(): jest.Mock<ReturnType<FetchFn>, Parameters<FetchFn>> {
    return jest.fn<ReturnType<FetchFn>, Parameters<FetchFn>>(() => {
        throw new Error('the network was called')
    })
}

/** Requests `fails` picks are answered with its status; everything else reaches the emulator. */
function failing(fails: (method: string, path: string, attempt: number) => number | undefined): FetchFn {
    const attempts = new Map<string, number>()
    return (input: string | URL, init?: FetchInit) => {
        const method = init?.method ?? 'GET'
        const url = new URL(String(input))
        const key = `${method} ${url.pathname} ${init?.body ?? ''}`
        const attempt = (attempts.get(key) ?? 0) + 1
        attempts.set(key, attempt)
        const status = fails(method, url.pathname, attempt)
        if (status === undefined) return hostNodeFetch(input, init)
        const body = JSON.stringify({ type: 'error.list', errors: [{ code: 'x', message: 'refused' }] })
        return Promise.resolve(new Response(body, { status }))
    }
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

    test('each record knows its line; a blank line is skipped but counted', async () => {
        const records = await readAll(fixture('events.jsonl'))
        expect(records.map((record) => record.line)).toEqual([1, 2, 3, 5, 6, 7, 8, 9])
    })

    test('unreadable rows are reported with their line and uuid', async () => {
        const records = await readAll(fixture('broken.jsonl'))
        expect(
            records.filter((record) => record.error).map(({ line, uuid, error }) => [line, uuid, error])
        ).toEqual([
            [2, 'b-2', 'not valid JSON'],
            [3, 'b-3', 'no event name'],
            [4, 'b-4', 'properties is not a JSON object'],
            [6, undefined, 'not a JSON object'],
        ])
    })

    test('an unreadable CSV record is reported with its line, the others read on', async () => {
        const file = path.join(workDir, 'broken.csv')
        writeFileSync(
            file,
            [
                'uuid,event,timestamp,properties.email',
                'c-1,signed_up,2024-05-01T12:00:00Z,a@example.com',
                'c-2,signed_up,2024-05-01T12:00:01Z,b@ex"ample.com',
                'c-3,signed_up,2024-05-01T12:00:02Z,c@example.com',
                '',
            ].join('\n')
        )
        const records = await readAll(file)
        expect(records.map(({ line, row, error }) => [line, row?.uuid, error])).toEqual([
            [2, 'c-1', undefined],
            [3, undefined, expect.stringMatching(/^unreadable CSV record: Invalid Opening Quote/)],
            [4, 'c-3', undefined],
        ])
    })

    test('a UTF-8 BOM does not cost the first row', async () => {
        const file = path.join(workDir, 'bom.jsonl')
        writeFileSync(
            file,
            Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), readFileSync(fixture('events.jsonl'))])
        )
        const records = await readAll(file)
        expect(records).toHaveLength(8)
        expect(records[0]).toMatchObject({ line: 1, row: { uuid: '018f3a1e-0001-7000-8000-000000000001' } })
    })

    test('Brotli is recognised by trying it, and says so; gzip and Parquet by their signatures', async () => {
        const file = path.join(workDir, 'events.jsonl.br')
        writeFileSync(file, brotliCompressSync(readFileSync(fixture('events.jsonl'))))
        expect(detectInput(file)).toEqual({
            format: 'jsonl',
            compression: 'brotli',
            note: expect.stringMatching(/read as Brotli.*no signature/),
        })
        expect((await readAll(file)).map((record) => record.row?.uuid)).toEqual(
            (await readAll(fixture('events.jsonl'))).map((record) => record.row?.uuid)
        )
        expect(detectInput(fixture('events.jsonl.gz'))).toEqual({ format: 'jsonl', compression: 'gzip' })
        expect(detectInput(path.join(EXAMPLES, 'events.parquet'))).toEqual({
            format: 'parquet',
            compression: 'none',
        })
        const junk = path.join(workDir, 'junk.bin')
        writeFileSync(junk, Buffer.from([0, 1, 2, 3, 250, 251]))
        expect(() => detectInput(junk)).toThrow(/neither JSON Lines nor CSV/)
    })

    test('Parquet rows (hyparquet) become the same events as JSON Lines', async () => {
        const parquet = await readAll(path.join(EXAMPLES, 'events.parquet'))
        const jsonl = await readAll(path.join(EXAMPLES, 'events.jsonl'))
        expect(parquet.map((record) => record.line)).toEqual(jsonl.map((_, index) => index + 1))
        expect(parquet.map((record) => record.row)).toEqual(jsonl.map((record) => record.row))
    })

    test.each([
        ['2024-05-01 12:05:00.123456', '2024-05-01T12:05:00.123Z'],
        ['2024-05-01 12:05:00', '2024-05-01T12:05:00.000Z'],
        ['2024-05-01T12:05:00+02:00', '2024-05-01T12:05:00+02:00'],
        [new Date('2024-05-01T12:05:00Z'), '2024-05-01T12:05:00.000Z'],
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

describe("the PostHog UI's CSV", () => {
    test('nested columns are rebuilt into objects, the `*.` prefix dropped, lists restored', () => {
        expect(
            unflattenColumns({
                '*.event': '$identify',
                '*.properties.$set.email': 'grace@example.org',
                '*.properties.$set.name': 'Grace',
                '*.properties.tags.0': 'a',
                '*.properties.tags.1': 'b',
                '*.properties.empty': '',
                'person.properties.email': 'g@example.org',
            })
        ).toEqual({
            event: '$identify',
            properties: { $set: { email: 'grace@example.org', name: 'Grace' }, tags: ['a', 'b'] },
            person_properties: { email: 'g@example.org' },
        })
    })

    test.each([
        ['19.99', 19.99],
        ['3', 3],
        ['007', '007'],
        ['1e3', '1e3'],
        ['True', true],
        ['False', false],
        ['pro', 'pro'],
    ])('cell %p → %p', (cell, value) => {
        expect(csvValue(cell)).toEqual(value)
    })

    test('an $identify row with its email in properties.$set.email reaches Intercom', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            inputs: [path.join(EXAMPLES, 'events-ui.csv')],
            target: { kind: 'emulator', emulator, deriveContacts: false },
        })
        expect(summary.files[0]).toMatchObject({
            complete: true,
            failed: { unreadable: 0, refused: 0, failed: 0 },
        })
        expect(stored(emulator)).toContainEqual(['identified', 1714565400, 'grace@example.org', {}])
        expect(stored(emulator)).toEqual(
            expect.arrayContaining([
                ['purchase', 1714565100, 'ada@example.com', expect.objectContaining({ plan: 'pro' })],
            ])
        )
    })
})

// ---------------------------------------------------------------------------------------------------
// Dry run and the emulator
// ---------------------------------------------------------------------------------------------------

describe('dry run', () => {
    test('prints what would be sent, masked, and no request leaves the process', async () => {
        const fetch = forbiddenFetch()
        const dir = checkpointDir()
        const { summary, printed, notices } = await run({
            target: { kind: 'dry-run' },
            fetch,
            checkpointDir: dir,
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
        expect(summary.files[0]).toMatchObject({
            rowsRead: 8,
            delivered: 5,
            skipped: EXPECTED_SKIPS,
            complete: true,
        })
        const everything = [...printed, ...notices, formatSummary(summary)].join('\n')
        expect(everything).not.toMatch(/(ada|grace|linus|staff)@/i)
        expect(() => readFileSync(dir)).toThrow() // a dry run writes no checkpoint
    })
})

describe('emulator', () => {
    test.each(FORMATS)('%s: the expected events reach Intercom, once each', async (name) => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            inputs: [fixture(name)],
            target: { kind: 'emulator', emulator, deriveContacts: false },
        })
        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
        expect(emulator.events().every((event: StoredEvent) => event.received === 1)).toBe(true)
        expect(summary.files[0]).toMatchObject({
            rowsRead: 8,
            delivered: 5,
            skipped: EXPECTED_SKIPS,
            complete: true,
        })
        expect(summary.intercomCalls.total).toBe(emulator.stats().calls)
        expect(exitCode(summary)).toBe(0)
    })

    test('events refused for good are listed with line, uuid and reason; they do not keep the exit code up', async () => {
        const emulator = await emulatorWith({ maxEventNames: 1 })
        const { summary } = await run({
            target: { kind: 'emulator', emulator },
            concurrency: 1, // signed_up takes the only event-name slot
            checkpointDir: checkpointDir(),
        })
        expect(summary.files[0].failed).toEqual({ unreadable: 0, refused: 3, failed: 0 })
        expect(failedFile(summary)).toEqual([
            {
                line: 2,
                uuid: '018f3a1e-0002-7000-8000-000000000002',
                kind: 'refused',
                reason: expect.stringMatching(
                    /422 to POST \/events: Cannot have more than 1 active event names/
                ),
            },
            expect.objectContaining({ line: 5, kind: 'refused' }),
            expect.objectContaining({ line: 7, kind: 'refused' }),
        ])
        expect(exitCode(summary)).toBe(0)
        expect(formatSummary(summary)).toMatch(/refused for good/)
    })
})

// ---------------------------------------------------------------------------------------------------
// Issue 11, item 1: the checkpoint is keyed by target and config
// ---------------------------------------------------------------------------------------------------

describe('checkpoints keyed by target and config', () => {
    const TOKEN = 'test-token'
    /** The real-Intercom target, with Intercom's hosts redirected to an emulator. */
    const realWorkspace = (emulator: Emulator): Partial<ReplayOptions> & Pick<ReplayOptions, 'target'> => ({
        target: { kind: 'intercom' },
        fetch: redirectingFetch(emulator.url, hostNodeFetch),
    })

    test('a trial run on the emulator, then a real run: the real run delivers everything', async () => {
        const dir = checkpointDir()
        const trial = await emulatorWith()
        await run({
            target: { kind: 'emulator', emulator: trial },
            checkpointDir: dir,
            config: { ...CONFIG, triggeringEvents: 'signed_up,purchase' },
        })
        const workspace = await emulatorWith()
        const real = await run({
            ...realWorkspace(workspace),
            checkpointDir: dir,
            config: { ...CONFIG, intercomApiKey: TOKEN },
        })
        expect(real.summary.files[0]).toMatchObject({ delivered: 5, complete: true })
        expect(stored(workspace)).toEqual(EXPECTED_EVENTS)

        const again = await run({
            ...realWorkspace(workspace),
            checkpointDir: dir,
            config: { ...CONFIG, intercomApiKey: TOKEN },
        })
        expect(again.notices).toEqual([
            expect.stringMatching(/already delivered to this target with this config: nothing to do/),
        ])
        expect(again.summary.intercomCalls.total).toBe(1) // GET /me only
    })

    test('a changed config is a new checkpoint: every event is sent again', async () => {
        const dir = checkpointDir()
        const emulator = await emulatorWith()
        const first = await run({
            target: { kind: 'emulator', emulator },
            checkpointDir: dir,
            config: { ...CONFIG, triggeringEvents: 'signed_up' },
        })
        expect(first.summary.files[0].delivered).toBe(2)
        const second = await run({ target: { kind: 'emulator', emulator }, checkpointDir: dir })
        expect(second.notices).toEqual([
            expect.stringMatching(
                /no checkpoint for this target and config, so every event is sent \(1 checkpoint/
            ),
        ])
        expect(second.summary.files[0]).toMatchObject({ delivered: 5, complete: true })
    })

    test('another token of the same region is another workspace', async () => {
        const dir = checkpointDir()
        const emulator = await emulatorWith({ tokens: ['token-a', 'token-b'] })
        await run({
            ...realWorkspace(emulator),
            checkpointDir: dir,
            config: { ...CONFIG, intercomApiKey: 'token-a' },
        })
        const other = await run({
            ...realWorkspace(emulator),
            checkpointDir: dir,
            config: { ...CONFIG, intercomApiKey: 'token-b' },
        })
        expect(other.summary.files[0].rowsRead).toBe(8)
        const names = readFileSync(other.summary.files[0].checkpoint ?? '', 'utf8')
        expect(names).not.toContain('token-b') // only a hash of it
    })
})

// ---------------------------------------------------------------------------------------------------
// Issue 11, item 2: failed events are never marked done, and the next run retries them
// ---------------------------------------------------------------------------------------------------

describe('outages', () => {
    test('a 5xx outage: nothing is marked done, the exit code says so, and the re-run delivers everything', async () => {
        const dir = checkpointDir()
        const emulator = await emulatorWith({ errorRate: 1 })
        const target = { kind: 'emulator', emulator, deriveContacts: false } as const
        const down = await run({ target, checkpointDir: dir })
        expect(down.summary.files[0]).toMatchObject({ delivered: 0, complete: false, failed: { failed: 5 } })
        expect(failedFile(down.summary)).toEqual(
            [1, 2, 5, 6, 7].map((line) =>
                expect.objectContaining({
                    line,
                    uuid: `018f3a1e-000${line > 3 ? line - 1 : line}-7000-8000-00000000000${line > 3 ? line - 1 : line}`,
                    kind: 'failed',
                    reason: expect.stringMatching(
                        /Intercom answered 50[023] to POST \/contacts\/search.*still failing after 5 attempts/
                    ),
                })
            )
        )
        expect(exitCode(down.summary)).toBe(1)
        expect(formatSummary(down.summary)).toMatch(/run the same command again once the cause is gone/)

        emulator.configure({ errorRate: 0 })
        const back = await run({ target, checkpointDir: dir })
        expect(back.notices).toEqual([expect.stringMatching(/retrying 5 earlier failure/)])
        expect(back.summary.files[0]).toMatchObject({
            rowsRead: 5,
            delivered: 5,
            complete: true,
            failed: { failed: 0 },
        })
        expect(stored(emulator)).toEqual(EXPECTED_EVENTS)
        expect(failedFile(back.summary)).toEqual([])
        expect(exitCode(back.summary)).toBe(0)
    })

    test('the network unreachable: the reason (ENOTFOUND) is in the summary without --verbose', async () => {
        const unreachable: FetchFn = () =>
            Promise.reject(Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' }))
        const { summary } = await run({
            target: { kind: 'intercom' },
            fetch: unreachable,
            config: { ...CONFIG, intercomApiKey: 'tok_abc123' },
        })
        expect(formatSummary(summary)).toMatch(
            /line 1 \(uuid 018f3a1e-0001-7000-8000-000000000001\): failed: .*ENOTFOUND/
        )
        expect(exitCode(summary)).toBe(1)
    })

    test('a long outage stops the file early; the rest is not marked done and the re-run sends it', async () => {
        const dir = checkpointDir()
        const file = generatedExport(40)
        const emulator = await emulatorWith({ errorRate: 1 })
        const down = await run({
            inputs: [file],
            target: { kind: 'emulator', emulator },
            checkpointDir: dir,
            stopAfterFailures: 3,
            concurrency: 1,
        })
        expect(down.summary.files[0]).toMatchObject({
            readToEnd: false,
            rowsRead: 3,
            stoppedBecause: expect.stringMatching(/3 events in a row not delivered/),
        })
        emulator.configure({ errorRate: 0 })
        const back = await run({ inputs: [file], target: { kind: 'emulator', emulator }, checkpointDir: dir })
        expect(back.summary.files[0]).toMatchObject({ rowsRead: 40, delivered: 40, complete: true })
        expect(emulator.events()).toHaveLength(40)
    })

    test('after a crash only the events in flight are sent again, and Intercom counts them once', async () => {
        const dir = checkpointDir()
        const file = generatedExport(40, 'crash.jsonl')
        const emulator = await emulatorWith({ latencyMs: 5 })
        const target = { kind: 'emulator', emulator } as const
        const controller = new AbortController()
        const stopWatching = emulator.onRequest((request) => {
            if (request.path === '/events' && emulator.events().length === 12) controller.abort()
        })
        const first = await run({
            inputs: [file],
            target,
            checkpointDir: dir,
            signal: controller.signal,
            checkpointEvery: 1,
            concurrency: 4,
        })
        stopWatching()
        expect(first.summary.interrupted).toBe(true)
        expect(exitCode(first.summary)).toBe(130)
        const second = await run({ inputs: [file], target, checkpointDir: dir })
        expect(second.summary.files[0]).toMatchObject({ complete: true })
        expect(second.summary.files[0].doneEarlier + second.summary.files[0].rowsRead).toBe(40)
        expect(emulator.events()).toHaveLength(40)
        const resent = emulator.events().reduce((sum, event) => sum + event.received - 1, 0)
        expect(resent).toBeLessThanOrEqual(4)
    })

    test('a RetryError from onEvent is retried as PostHog retried it, then the event goes through', async () => {
        const emulator = await emulatorWith()
        const { summary } = await run({
            target: { kind: 'emulator', emulator, deriveContacts: false },
            config: { ...CONFIG, contactSync: 'update existing contacts' },
            fetch: failing((method, _path, attempt) => (method === 'PUT' && attempt <= 2 ? 503 : undefined)),
        })
        expect(summary.files[0]).toMatchObject({ retried: 1, delivered: 5, complete: true })
        expect(emulator.contacts().find((contact) => contact.email === 'grace@example.org')?.name).toBe(
            'Grace'
        )
    })
})

// ---------------------------------------------------------------------------------------------------
// Issue 11, item 3: many files, each with its own checkpoint
// ---------------------------------------------------------------------------------------------------

describe('many files', () => {
    test('files, a folder and a glob in one run, each with its own progress and checkpoint', async () => {
        const folder = path.join(workDir, 'batch')
        mkdirSync(folder, { recursive: true })
        copyFileSync(fixture('events.jsonl'), path.join(folder, 'part-0.jsonl'))
        copyFileSync(fixture('events.jsonl.gz'), path.join(folder, 'part-1.jsonl.gz'))
        expect(expandInputs([folder])).toEqual([
            path.join(folder, 'part-0.jsonl'),
            path.join(folder, 'part-1.jsonl.gz'),
        ])
        expect(expandInputs([path.join(folder, '*.gz')])).toEqual([path.join(folder, 'part-1.jsonl.gz')])
        expect(() => expandInputs([path.join(folder, '*.parquet')])).toThrow(/No export file .* matches/)

        const dir = checkpointDir()
        const emulator = await emulatorWith()
        const target = { kind: 'emulator', emulator } as const
        const first = await run({ inputs: [path.join(folder, 'part-0.jsonl')], target, checkpointDir: dir })
        expect(first.summary.files[0].complete).toBe(true)
        const all = await run({ inputs: [folder, fixture('events.csv')], target, checkpointDir: dir })
        expect(
            all.summary.files.map((file) => [path.basename(file.file), file.rowsRead, file.complete])
        ).toEqual([
            ['part-0.jsonl', 0, true],
            ['part-1.jsonl.gz', 8, true],
            ['events.csv', 8, true],
        ])
        expect(new Set(all.summary.files.map((file) => file.checkpoint)).size).toBe(3)
        expect(exitCode(all.summary)).toBe(0)
    })

    test('--limit spans the files, and the next run goes on from there', async () => {
        const dir = checkpointDir()
        const emulator = await emulatorWith()
        const target = { kind: 'emulator', emulator, deriveContacts: false } as const
        const inputs = [fixture('events.jsonl'), fixture('events.csv')]
        const trial = await run({ inputs, target, checkpointDir: dir, limit: 10 })
        expect(trial.summary.files.map((file) => file.rowsRead)).toEqual([8, 2])
        expect(exitCode(trial.summary)).toBe(1)
        const rest = await run({ inputs, target, checkpointDir: dir })
        expect(rest.summary.files.map((file) => file.rowsRead)).toEqual([0, 6])
        expect(exitCode(rest.summary)).toBe(0)
    })
})

// ---------------------------------------------------------------------------------------------------
// Throughput: Intercom's rate-limit windows spent to the plugin's threshold, never past it
// ---------------------------------------------------------------------------------------------------

describe('the rate-limit gate', () => {
    test('holds calls at 2% of the window left (in-flight calls counted) until the reset', () => {
        let now = 1_000_000
        const gate = new WindowGate(undefined, () => now)
        const headers = (remaining: number) =>
            new Headers({
                'x-ratelimit-limit': '1000',
                'x-ratelimit-remaining': String(remaining),
                'x-ratelimit-reset': '1010',
            })
        expect(gate.pausedUntil()).toBe(0)
        void gate.acquire()
        gate.release(200, headers(22)) // 22 - 0 in flight - 20 reserve - 1 > 0
        expect(gate.pausedUntil()).toBe(0)
        void gate.acquire() // one in flight: 22 - 1 - 20 - 1 = 0
        expect(gate.pausedUntil()).toBe(1_010_025)
        gate.release(429, headers(500))
        expect(gate.pausedUntil()).toBe(1_010_025)
        now = 1_010_000
        expect(gate.pausedUntil()).toBe(0)
    })

    test('a run larger than a window: every event delivered, no 429 and no plugin backoff', async () => {
        const emulator = await emulatorWith({ rateLimit: 50, windowSeconds: 1 })
        const { summary } = await run({
            inputs: [generatedExport(120, 'windows.jsonl')],
            target: { kind: 'emulator', emulator },
        })
        expect(summary.files[0]).toMatchObject({ delivered: 120, retried: 0, complete: true })
        expect(emulator.stats().rateLimited).toBe(0)
    })

    test('the pacer spaces starts out and honours a pause; slots bound the work in flight', async () => {
        const pacer = new Pacer(100)
        const started = Date.now()
        await Promise.all(Array.from({ length: 5 }, () => pacer.take()))
        expect(Date.now() - started).toBeGreaterThanOrEqual(35)
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

// ---------------------------------------------------------------------------------------------------
// The real Intercom: host guard and token hygiene
// ---------------------------------------------------------------------------------------------------

describe('the real Intercom', () => {
    const TOKEN = 'tok_SECRET_9f8e7d6c'

    test("only the configured region's host is called, and the token is never printed or stored", async () => {
        const calls: string[] = []
        const intercom = dryRunFetch(() => undefined) // stands in for the network: it answers like Intercom
        const network: FetchFn = (input, init) => {
            calls.push(String(input))
            return intercom(input, init)
        }
        const dir = checkpointDir()
        const { summary, notices, printed } = await run({
            target: { kind: 'intercom' },
            config: { ...CONFIG, intercomApiKey: TOKEN, region: 'EU' },
            fetch: network,
            checkpointDir: dir,
        })
        expect(summary.files[0].delivered).toBe(5)
        expect(calls.every((url) => url.startsWith('https://api.eu.intercom.io/'))).toBe(true)
        expect([...notices, ...printed, formatSummary(summary)].join('\n')).not.toContain(TOKEN)
        expect(readFileSync(summary.files[0].checkpoint ?? '', 'utf8')).not.toContain(TOKEN)
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

    test('redact masks emails and the token in any text', () => {
        expect(redact(`to ada@example.com with ${TOKEN}`, TOKEN)).toBe('to a***@example.com with [token]')
        expect(maskEmail('x@y.io')).toBe('x***@y.io')
        expect(routeOf('put', 'https://api.intercom.io/contacts/abc123')).toBe('PUT /contacts/{id}')
    })
})
