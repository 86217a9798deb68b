/** At least 200 generated bad HTTP inputs: each gets a clear 4xx, the relay never crashes, calls nobody, leaks nothing. */
import { connect } from 'node:net'
import { Emulator, startEmulator } from '../../tools/intercom/emulator'
import { postJson, TEST_SECRET, webhookItem } from '../../relay/harness'
import { MAX_BATCH } from '../../relay/payload'
import { settingsFor, startRelay, TestRelay } from './helpers'

/** Put in every bad payload: it must never show up in a log line. */
const MARKER = 'leak-marker@private.example'
const BODY_LIMIT = 64 * 1024

interface BadInput {
    name: string
    body: string
    headers?: Record<string, string>
    method?: string
    path?: string
    expected: number[]
}

const valid = () => webhookItem({ uuid: 'u-1', email: MARKER })
const json = (value: unknown) => JSON.stringify(value)

function malformedJson(): BadInput[] {
    const text = json(valid())
    const cuts = Array.from({ length: 30 }, (_, i) => Math.floor(((i + 1) * text.length) / 31))
    const broken = [
        '',
        '{',
        '}',
        '[',
        '[{]',
        "{'event': {}}",
        '{"event": {"event": "x",}}',
        '{"event": NaN}',
        '{"event": undefined}',
        'null x',
        '\u0000\u0001',
        `{"event": {"event": "signed_in", "distinct_id": "${MARKER}"`,
        '{"event": {"event": "x", "distinct_id": "y"}}}',
        '<xml/>',
        'event=signed_in',
    ]
    return [
        ...cuts.map((cut) => ({ name: `truncated at ${cut}`, body: text.slice(0, cut), expected: [400] })),
        ...broken.map((body, i) => ({ name: `malformed #${i}`, body, expected: [400] })),
    ]
}

/** Values of the wrong type for each field (a valid value for a field is left out). */
function wrongTypes(): BadInput[] {
    const wrong: unknown[] = [42, -1, 0, true, false, [], [MARKER], {}, { a: MARKER }, 'text', '', null, 1.5]
    const notString = (v: unknown) => typeof v !== 'string'
    const notObject = (v: unknown) => !isObject(v)
    const fields: [string, (value: unknown) => unknown, (value: unknown) => boolean][] = [
        ['body', (v) => v, () => true],
        ['event', (v) => ({ event: v }), () => true],
        ['event.event', (v) => ({ event: { ...valid().event, event: v } }), (v) => notString(v) || v === ''],
        [
            'event.distinct_id',
            (v) => ({ event: { ...valid().event, distinct_id: v } }),
            (v) => notString(v) || v === '',
        ],
        ['event.uuid', (v) => ({ event: { ...valid().event, uuid: v } }), notString],
        ['event.properties', (v) => ({ event: { ...valid().event, properties: v } }), notObject],
        ['event.timestamp', (v) => ({ event: { ...valid().event, timestamp: v } }), notString],
        ['event.elements_chain', (v) => ({ event: { ...valid().event, elements_chain: v } }), notString],
        ['event.url', (v) => ({ event: { ...valid().event, url: v } }), notString],
        ['person', (v) => ({ ...valid(), person: v }), (v) => v !== null && notObject(v)],
        ['person.properties', (v) => ({ ...valid(), person: { id: 'p', properties: v } }), notObject],
        ['person.id', (v) => ({ ...valid(), person: { id: v } }), notString],
    ]
    return fields.flatMap(([field, build, isWrong]) =>
        wrong.filter(isWrong).map((value) => ({
            name: `${field} = ${json(value)}`,
            body: json(build(value)),
            expected: [400],
        }))
    )
}

/** Seeded random bytes: the relay must refuse garbage the same way every run. */
function garbage(count: number): BadInput[] {
    let state = 2463534242
    const next = () => {
        state ^= state << 13
        state ^= state >>> 17
        state ^= state << 5
        return (state >>> 0) / 2 ** 32
    }
    return Array.from({ length: count }, (_, i) => {
        const length = 1 + Math.floor(next() * 200)
        const bytes = Array.from({ length }, () => String.fromCharCode(32 + Math.floor(next() * 95)))
        return { name: `random text #${i}`, body: `{${bytes.join('')}`, expected: [400] }
    })
}

function isObject(value: unknown): boolean {
    return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function wrongShapes(): BadInput[] {
    const long = (n: number) => 'x'.repeat(n)
    const shapes: [string, unknown][] = [
        ['empty array', []],
        ['array of numbers', [1, 2, 3]],
        ['array with one bad item', [valid(), { event: { event: 'x' } }]],
        ['array of arrays', [[valid()]]],
        [
            'too many items',
            Array.from({ length: MAX_BATCH + 1 }, () => ({ event: { event: 'e', distinct_id: 'd' } })),
        ],
        ['empty event name', { event: { ...valid().event, event: '' } }],
        ['empty distinct_id', { event: { ...valid().event, distinct_id: '' } }],
        ['event name too long', { event: { ...valid().event, event: long(401) } }],
        ['distinct_id too long', { event: { ...valid().event, distinct_id: long(401) } }],
        ['uuid too long', { event: { ...valid().event, uuid: long(201) } }],
        ['timestamp too long', { event: { ...valid().event, timestamp: long(101) } }],
        ['no event at all', { person: valid().person }],
        ['event without name', { event: { distinct_id: 'd', properties: {} } }],
        ['a string body', MARKER],
        ['a number body', 12],
        ['null body', null],
        ['true body', true],
    ]
    return shapes.map(([name, value]) => ({ name, body: json(value), expected: [400] }))
}

function poisoned(): BadInput[] {
    return [
        {
            name: '__proto__ at top',
            body: `{"__proto__": {"admin": true}, "event": {"event": "x", "distinct_id": "d"}}`,
        },
        {
            name: '__proto__ in event',
            body: `{"event": {"__proto__": {"x": 1}, "event": "x", "distinct_id": "d"}}`,
        },
        {
            name: 'constructor.prototype',
            body: `{"constructor": {"prototype": {"x": 1}}, "event": {"event": "x", "distinct_id": "d"}}`,
        },
    ].map((c) => ({ ...c, expected: [400] }))
}

function hugeBodies(): BadInput[] {
    const sizes = [BODY_LIMIT + 1, BODY_LIMIT * 2, 1024 * 1024, 4 * 1024 * 1024]
    return sizes.flatMap((size) => [
        {
            name: `${size} bytes of JSON`,
            body: json({ event: { ...valid().event, properties: { blob: 'y'.repeat(size) } } }),
            expected: [413],
        },
        {
            name: `${size} bytes without the secret (refused before reading)`,
            body: 'z'.repeat(size),
            headers: { 'x-relay-secret': 'nope' },
            expected: [401],
        },
    ])
}

function badSecrets(): BadInput[] {
    const secrets = [
        'wrong',
        TEST_SECRET.toUpperCase(),
        TEST_SECRET.slice(0, -1),
        `${TEST_SECRET}${TEST_SECRET}`,
        `Bearer ${TEST_SECRET}`,
        'a'.repeat(8000),
        'ünïcödé',
        '0',
        TEST_SECRET.split('').reverse().join(''),
        MARKER,
    ]
    const cases: BadInput[] = secrets.map((secret, i) => ({
        name: `wrong secret #${i}`,
        body: json(valid()),
        headers: { 'x-relay-secret': secret },
        expected: [401],
    }))
    cases.push(
        { name: 'no secret', body: json(valid()), headers: { 'x-relay-secret': '' }, expected: [401] },
        {
            name: 'secret as Authorization',
            body: json(valid()),
            headers: { 'x-relay-secret': '', authorization: TEST_SECRET },
            expected: [401],
        },
        {
            name: 'secret in another header',
            body: json(valid()),
            headers: { 'x-relay-secret': '', 'x-secret': TEST_SECRET },
            expected: [401],
        }
    )
    return cases
}

function wrongRequests(): BadInput[] {
    const body = json(valid())
    return [
        // fastify parses text/plain itself: the schema then refuses the string.
        { name: 'text/plain', body, headers: { 'content-type': 'text/plain' }, expected: [400, 415] },
        {
            name: 'form encoded',
            body: 'event=x',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            expected: [415],
        },
        {
            name: 'multipart',
            body,
            headers: { 'content-type': 'multipart/form-data; boundary=x' },
            expected: [415],
        },
        { name: 'xml', body: '<a/>', headers: { 'content-type': 'application/xml' }, expected: [415] },
        { name: 'GET /events', body: '', method: 'GET', path: '/events', expected: [400, 404] },
        { name: 'PUT /events', body, method: 'PUT', path: '/events', expected: [404] },
        { name: 'DELETE /events', body: '', method: 'DELETE', path: '/events', expected: [400, 404] },
        { name: 'POST /unknown', body, path: '/unknown', expected: [404] },
        { name: 'POST /events/../admin', body, path: '/admin', expected: [404] },
        { name: 'POST /metrics', body, path: '/metrics', expected: [404] },
    ]
}

const CASES: BadInput[] = [
    ...malformedJson(),
    ...garbage(30),
    ...wrongTypes(),
    ...wrongShapes(),
    ...poisoned(),
    ...hugeBodies(),
    ...badSecrets(),
    ...wrongRequests(),
]

let emulator: Emulator
let relay: TestRelay

beforeAll(async () => {
    emulator = await startEmulator()
    relay = await startRelay(
        settingsFor({
            emulatorUrl: emulator.url,
            relay: { bodyLimitBytes: BODY_LIMIT, requestTimeoutMs: 800 },
        })
    )
    emulator.reset() // forget setup's GET /me
})
afterAll(async () => {
    await relay.relay.close()
    await emulator.close()
})

test('there are at least 200 generated cases', () => {
    expect(CASES.length).toBeGreaterThanOrEqual(200)
})

test.each(CASES.map((c) => [c.name, c] as const))('%s → clear 4xx', async (_name, input) => {
    const headers = { 'x-relay-secret': TEST_SECRET, ...input.headers }
    const res = await postJson(`${relay.url}${input.path ?? '/events'}`, input.body, {
        headers,
        method: input.method,
    })
    expect(input.expected).toContain(res.status)
    if (res.status !== 408) expect(res.body).toMatchObject({ message: expect.any(String) })
})

/** Opens a raw connection, sends part of a request, then stalls: the relay must cut it off with a 408. */
function slowClient(partial: string): Promise<string> {
    const port = Number(new URL(relay.url).port)
    return new Promise((resolve) => {
        let answer = ''
        const socket = connect({ port, host: '127.0.0.1' }, () => socket.write(partial))
        socket.on('data', (chunk) => (answer += chunk.toString('utf8')))
        socket.on('close', () => resolve(answer))
        socket.on('error', () => resolve(answer))
        socket.setTimeout(5000, () => socket.destroy())
    })
}

const head = (length: number, secret = TEST_SECRET) =>
    `POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-relay-secret: ${secret}\r\nContent-Length: ${length}\r\n\r\n`

test.each([
    ['headers only, no body', head(500)],
    ['half a body', head(500) + json(valid()).slice(0, 40)],
    ['a request line, no headers end', 'POST /events HTTP/1.1\r\nHost: x\r\n'],
    ['nothing but a connection', ''],
    ['no secret and a stalled body', head(500, 'wrong') + '{'],
])('slow client: %s → 408 (401 without the secret), then closed', async (_name, partial) => {
    const answer = await slowClient(partial)
    expect(answer).toMatch(/^HTTP\/1\.1 (408 Request Timeout|401 Unauthorized)\r\n/)
})

test('after all of it: alive, nobody called, nothing leaked', async () => {
    expect((await fetch(`${relay.url}/healthz`)).status).toBe(200)
    const ok = await postJson(`${relay.url}/events`, webhookItem({ uuid: 'fine', event: '$pageview' }))
    expect(ok.status).toBe(200)
    expect(emulator.requests()).toEqual([])
    const logs = relay.logs.join('')
    expect(logs).not.toContain(MARKER)
    expect(logs).not.toContain(TEST_SECRET)
    expect(logs).not.toContain('leak-marker')
})
