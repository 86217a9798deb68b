/** The Intercom emulator over loopback: every rule the plugin's tests rely on.
 *
 * Each rule the plugin's end-to-end tests rely on is asserted on status, body and counters. A manual clock makes rate-limit windows and search lag deterministic.
 */
import { Emulator, EmulatorOptions, SeedContact, startEmulator } from '../../tools/intercom/emulator'
import { parseCliArgs, parseSeedFile } from '../../tools/intercom/emulator-cli'

const TOKEN = 'test-token'
/** Aligned on 1 s and 10 s windows, so a test starts at the beginning of a rate-limit window. */
const T0 = Date.UTC(2030, 0, 1)
const CREATED_AT = 1_700_000_000

const SEEDS: SeedContact[] = [
    { id: 'user-ada', email: 'ada@example.test', role: 'user', external_id: 'ext-ada', name: 'Ada' },
    { id: 'lead-ada', email: 'Ada@Example.test', role: 'lead' },
    { id: 'lead-bob', email: 'bob@example.test', role: 'lead' },
]

interface Answer {
    status: number
    body: unknown
    text: string
    headers: Headers
}

interface CallOptions {
    /** null sends no Authorization header. */
    token?: string | null
    accept?: string
    contentType?: string
    /** Sent as is instead of JSON.stringify(body). */
    raw?: string
}

function manualClock(start = T0) {
    let now = start
    return { now: () => now, advance: (ms: number) => void (now += ms) }
}

const running: Emulator[] = []

async function start(options: EmulatorOptions = {}): Promise<Emulator> {
    const emulator = await startEmulator({ contacts: SEEDS, ...options })
    running.push(emulator)
    return emulator
}

afterEach(async () => {
    await Promise.all(running.splice(0).map((emulator) => emulator.close()))
})

async function call(
    emulator: Emulator,
    method: string,
    path: string,
    body?: unknown,
    options: CallOptions = {}
): Promise<Answer> {
    const headers: Record<string, string> = {
        Accept: options.accept ?? 'application/json',
        'Content-Type': options.contentType ?? 'application/json',
        'Intercom-Version': '2.11',
    }
    const token = options.token === undefined ? TOKEN : options.token
    if (token !== null) headers.Authorization = `Bearer ${token}`
    const payload = options.raw ?? (body === undefined ? undefined : JSON.stringify(body))
    const response = await fetch(emulator.url + path, { method, headers, body: payload })
    const text = await response.text()
    return { status: response.status, body: parseText(text), text, headers: response.headers }
}

function parseText(text: string): unknown {
    if (text === '') return null
    try {
        return JSON.parse(text)
    } catch {
        return text
    }
}

/** Intercom's error body: `{type: "error.list", request_id, errors: [{code, message}]}`. */
function expectError(answer: Answer, status: number, code: string, message?: RegExp | string): void {
    expect(answer.status).toBe(status)
    expect(answer.body).toEqual({
        type: 'error.list',
        request_id: expect.any(String),
        errors: [
            { code, message: message === undefined ? expect.any(String) : expect.stringMatching(message) },
        ],
    })
}

const event = (fields: Record<string, unknown>) => ({
    event_name: 'signed-up',
    created_at: CREATED_AT,
    id: 'user-ada',
    ...fields,
})

describe('every request', () => {
    test.each([
        ['no Authorization header', null],
        ['an unknown token', 'wrong-token'],
        ['an empty token', ''],
    ])('%s → 401 unauthorized "Access Token Invalid"', async (_case, token) => {
        const emulator = await start()
        const answer = await call(emulator, 'GET', '/me', undefined, { token })
        expectError(answer, 401, 'unauthorized', /^Access Token Invalid$/)
        expect(answer.headers.get('x-ratelimit-limit')).toBe('1666')
    })

    test('a non-Bearer scheme is refused too', async () => {
        const emulator = await start()
        const response = await fetch(`${emulator.url}/me`, {
            headers: { Authorization: `Basic ${TOKEN}`, Accept: 'application/json' },
        })
        expect(response.status).toBe(401)
    })

    test.each([
        ['text/html', 406],
        ['application/xml, text/plain', 406],
        ['application/json', 200],
        ['application/json; charset=utf-8', 200],
        ['*/*', 200],
        ['text/html, */*;q=0.8', 200],
    ])('Accept: %s → %i', async (accept, status) => {
        const emulator = await start()
        const answer = await call(emulator, 'GET', '/me', undefined, { accept })
        expect(answer.status).toBe(status)
        if (status === 406) expectError(answer, 406, 'not_acceptable')
    })

    test.each([
        ['invalid JSON', { raw: '{"event_name": ' }, /not valid JSON/],
        ['a JSON array', { raw: '[1, 2]' }, /JSON object/],
        [
            'a form body',
            { raw: 'event_name=x', contentType: 'application/x-www-form-urlencoded' },
            /Content-Type/,
        ],
    ])('a body that is %s → 400 parameter_invalid', async (_case, options, message) => {
        const emulator = await start()
        expectError(
            await call(emulator, 'POST', '/events', undefined, options),
            400,
            'parameter_invalid',
            message
        )
        expect(emulator.events()).toEqual([])
    })

    test.each([
        ['GET', '/nowhere'],
        ['GET', '/events'],
        ['DELETE', '/contacts/user-ada'],
        ['POST', '/events/'],
    ])('unknown route %s %s → 404', async (method, path) => {
        const emulator = await start()
        expectError(await call(emulator, method, path), 404, 'not_found')
        expect(emulator.stats().byRoute).toEqual({ unknown: 1 })
    })

    test('startEmulator refuses a non-loopback host', async () => {
        await expect(startEmulator({ host: '0.0.0.0' })).rejects.toThrow(/loopback/)
        await expect(startEmulator({ host: '192.168.1.10' })).rejects.toThrow(/loopback/)
    })

    test('startEmulator refuses nonsense options', async () => {
        await expect(startEmulator({ errorRate: 1.5 })).rejects.toThrow(RangeError)
        await expect(startEmulator({ rateLimit: 0 })).rejects.toThrow(RangeError)
    })
})

describe('GET /me', () => {
    test('returns the admin and the app with the configured region', async () => {
        const emulator = await start({ region: 'Europe' })
        const answer = await call(emulator, 'GET', '/me')
        expect(answer.status).toBe(200)
        expect(answer.body).toMatchObject({
            type: 'admin',
            id: expect.any(String),
            email: 'admin@example.test',
            name: expect.any(String),
            app: { type: 'app', id_code: expect.any(String), name: expect.any(String), region: 'Europe' },
        })
    })
})

describe('POST /events', () => {
    const INVALID = 'parameter_invalid'
    const MISSING = 'parameter_not_found'
    const money = (amount: number) => ({ price: { amount, currency: 'eur' } })

    test.each([
        ['no event_name', { event_name: undefined }, MISSING, /event_name/],
        ['an empty event_name', { event_name: ' ' }, INVALID, /event_name/],
        ['no created_at', { created_at: undefined }, MISSING, /created_at/],
        ['created_at as a numeric string', { created_at: '1700000000' }, INVALID, /created_at/],
        ['created_at as an ISO date', { created_at: '2023-11-14T22:13:20Z' }, INVALID, /created_at/],
        ['created_at with a fraction', { created_at: 1700000000.5 }, INVALID, /created_at/],
        ['created_at in milliseconds', { created_at: 1700000000000 }, INVALID, /seconds/],
        ['no identifier', { id: undefined }, MISSING, /id, user_id or email/],
        ['id and email', { email: 'ada@example.test' }, INVALID, /id and email/],
        ['user_id and email', { id: undefined, user_id: 'ext-ada', email: 'a@b.test' }, INVALID, /Exactly/],
        ['a numeric id', { id: 42 }, INVALID, /id must be/],
        ['an unknown parameter', { properties: {} }, 'bad_request', /bad 'properties' parameter/],
        ['metadata that is a list', { metadata: ['a'] }, INVALID, /metadata/],
        ['a nested metadata object', { metadata: { plan: { name: 'pro' } } }, INVALID, /'plan'.*nested/],
        ['a metadata array', { metadata: { tags: ['a', 'b'] } }, INVALID, /'tags'/],
        ['a metadata null', { metadata: { gone: null } }, INVALID, /'gone'/],
        ['a metadata key with a dot', { metadata: { 'a.b': 1 } }, INVALID, /'a\.b'/],
        ['a metadata key with a dollar', { metadata: { $browser: 'x' } }, INVALID, /'\$browser'/],
        ['a string of 256 characters', { metadata: { s: 'x'.repeat(256) } }, INVALID, /255/],
        ['a money amount in float', { metadata: money(9.99) }, INVALID, /'price'/],
        ['a rich link to ftp', { metadata: { doc: { url: 'ftp://a.test', value: 'A' } } }, INVALID, /'doc'/],
    ])('400 for %s', async (_case, fields, code, message) => {
        const emulator = await start()
        expectError(await call(emulator, 'POST', '/events', event(fields)), 400, code, message)
        expect(emulator.events()).toEqual([])
        expect(emulator.stats().eventsAccepted).toBe(0)
    })

    test.each([
        ['an unknown contact id', { id: 'nobody' }],
        ['an unknown email', { id: undefined, email: 'nobody@example.test' }],
        ['an unknown user_id', { id: undefined, user_id: 'ext-nobody' }],
        ['the email of a lead (leads need their id)', { id: undefined, email: 'bob@example.test' }],
    ])('404 "User Not Found" for %s', async (_case, fields) => {
        const emulator = await start()
        expectError(
            await call(emulator, 'POST', '/events', event(fields)),
            404,
            'not_found',
            /^User Not Found$/
        )
        expect(emulator.events()).toEqual([])
    })

    test.each([
        ['id of a user', { id: 'user-ada' }, 'user-ada'],
        ['id of a lead', { id: 'lead-bob' }, 'lead-bob'],
        ['user_id (external id)', { id: undefined, user_id: 'ext-ada' }, 'user-ada'],
        [
            'email of a user, any case; never the lead sharing it',
            { id: undefined, email: 'ADA@example.TEST' },
            'user-ada',
        ],
    ])('identified by %s → 202 with an empty body', async (_case, fields, contactId) => {
        const emulator = await start()
        const answer = await call(emulator, 'POST', '/events', event(fields))
        expect(answer.status).toBe(202)
        expect(answer.text).toBe('')
        expect(emulator.events()).toEqual([
            {
                event_name: 'signed-up',
                created_at: CREATED_AT,
                contact_id: contactId,
                metadata: {},
                received: 1,
            },
        ])
    })

    test('keeps the supported metadata types and only the first 10 keys, in order', async () => {
        const emulator = await start()
        const metadata = {
            plan: 'pro',
            seats: 3,
            ratio: 0.5,
            trial: true,
            renewal_date: 1700000000,
            article: 'https://example.test/a',
            doc: { url: 'https://example.test/doc', value: 'The doc' },
            price: { amount: 34999, currency: 'eur' },
            k9: 'nine',
            k10: 'ten',
            k11: 'dropped',
            k12: 'dropped',
        }
        expect((await call(emulator, 'POST', '/events', event({ metadata }))).status).toBe(202)
        const stored = emulator.events()[0].metadata
        expect(Object.keys(stored)).toEqual(Object.keys(metadata).slice(0, 10))
        expect(stored.doc).toEqual(metadata.doc)
        expect(stored.price).toEqual(metadata.price)
    })

    test('with longStrings "truncate", a long string is cut to 255 characters instead', async () => {
        const emulator = await start({ longStrings: 'truncate' })
        const answer = await call(emulator, 'POST', '/events', event({ metadata: { s: 'é'.repeat(300) } }))
        expect(answer.status).toBe(202)
        expect(emulator.events()[0].metadata.s).toBe('é'.repeat(255))
    })

    test('deduplicates on contact + event_name + created_at: 202 every time, stored once', async () => {
        const emulator = await start()
        for (let i = 0; i < 3; i++) {
            expect((await call(emulator, 'POST', '/events', event({}))).status).toBe(202)
        }
        // Same contact by another identifier: still the same event.
        const viaEmail = event({ id: undefined, email: 'ada@example.test' })
        expect((await call(emulator, 'POST', '/events', viaEmail)).status).toBe(202)
        // One second later, or another contact: new events.
        await call(emulator, 'POST', '/events', event({ created_at: CREATED_AT + 1 }))
        await call(emulator, 'POST', '/events', event({ id: 'lead-bob' }))
        expect(emulator.events().map((e) => [e.contact_id, e.created_at, e.received])).toEqual([
            ['user-ada', CREATED_AT, 4],
            ['user-ada', CREATED_AT + 1, 1],
            ['lead-bob', CREATED_AT, 1],
        ])
        expect(emulator.stats()).toMatchObject({ eventsAccepted: 3, eventsDeduplicated: 3 })
    })

    test('refuses a new event name past maxEventNames with 422, still takes known names', async () => {
        const emulator = await start({ maxEventNames: 3 })
        for (const name of ['a', 'b', 'c']) {
            expect((await call(emulator, 'POST', '/events', event({ event_name: name }))).status).toBe(202)
        }
        const fourth = await call(emulator, 'POST', '/events', event({ event_name: 'd' }))
        expectError(fourth, 422, 'parameter_invalid', /^Cannot have more than 3 active event names$/)
        expect(
            (await call(emulator, 'POST', '/events', event({ event_name: 'a', created_at: 1 }))).status
        ).toBe(202)
        expect(emulator.events().map((e) => e.event_name)).toEqual(['a', 'b', 'c', 'a'])
    })

    test('the default limit is 120 event names', async () => {
        const emulator = await start()
        for (let i = 0; i < 120; i++) {
            await call(emulator, 'POST', '/events', event({ event_name: `e${i}` }))
        }
        expect(emulator.stats().eventsAccepted).toBe(120)
        const answer = await call(emulator, 'POST', '/events', event({ event_name: 'one-too-many' }))
        expectError(answer, 422, 'parameter_invalid', /^Cannot have more than 120 active event names$/)
    })
})

describe('POST /contacts/search', () => {
    const byEmail = (value: string, extra: Record<string, unknown> = {}) => ({
        query: { field: 'email', operator: '=', value },
        ...extra,
    })

    test('returns every contact with the email, any case, users and leads alike', async () => {
        const emulator = await start()
        const answer = await call(emulator, 'POST', '/contacts/search', byEmail('ADA@example.test'))
        expect(answer.status).toBe(200)
        expect(answer.body).toMatchObject({
            type: 'list',
            total_count: 2,
            pages: { type: 'pages', page: 1, per_page: 50, total_pages: 1 },
        })
        const data = (answer.body as { data: Record<string, unknown>[] }).data
        expect(data.map((c) => [c.id, c.role])).toEqual([
            ['user-ada', 'user'],
            ['lead-ada', 'lead'],
        ])
        expect(Object.keys(data[0])).toEqual(
            expect.arrayContaining([
                'type',
                'id',
                'workspace_id',
                'external_id',
                'role',
                'email',
                'name',
                'phone',
                'created_at',
                'updated_at',
                'signed_up_at',
                'last_seen_at',
                'custom_attributes',
            ])
        )
        expect(emulator.stats().searches).toBe(1)
    })

    test.each([
        ['external_id', { field: 'external_id', operator: '=', value: 'ext-ada' }, ['user-ada']],
        ['id', { field: 'id', operator: '=', value: 'lead-bob' }, ['lead-bob']],
        ['an unknown email', { field: 'email', operator: '=', value: 'nobody@example.test' }, []],
        [
            'email AND role',
            {
                operator: 'AND',
                value: [
                    { field: 'email', operator: '=', value: 'ada@example.test' },
                    { field: 'role', operator: '=', value: 'lead' },
                ],
            },
            ['lead-ada'],
        ],
        [
            'an OR of two emails',
            {
                operator: 'OR',
                value: [
                    { field: 'email', operator: '=', value: 'bob@example.test' },
                    { field: 'external_id', operator: '=', value: 'ext-ada' },
                ],
            },
            ['user-ada', 'lead-bob'],
        ],
    ])('by %s', async (_case, query, ids) => {
        const emulator = await start()
        const answer = await call(emulator, 'POST', '/contacts/search', { query })
        expect(answer.status).toBe(200)
        expect((answer.body as { data: { id: string }[] }).data.map((c) => c.id)).toEqual(ids)
    })

    test('pages with per_page and the starting_after cursor', async () => {
        const emulator = await start()
        const first = await call(
            emulator,
            'POST',
            '/contacts/search',
            byEmail('ada@example.test', { pagination: { per_page: 1 } })
        )
        expect(first.body).toMatchObject({
            total_count: 2,
            data: [{ id: 'user-ada' }],
            pages: {
                page: 1,
                per_page: 1,
                total_pages: 2,
                next: { page: 2, starting_after: expect.any(String) },
            },
        })
        const cursor = (first.body as { pages: { next: { starting_after: string } } }).pages.next
            .starting_after
        const pagination = { per_page: 1, starting_after: cursor }
        const second = await call(
            emulator,
            'POST',
            '/contacts/search',
            byEmail('ada@example.test', { pagination })
        )
        expect(second.body).toMatchObject({ data: [{ id: 'lead-ada' }], pages: { page: 2 } })
    })

    test.each([
        ['no query', {}, 'parameter_not_found'],
        [
            'an unsupported field',
            { query: { field: 'custom_attributes.plan', operator: '=', value: 'x' } },
            'parameter_invalid',
        ],
        [
            'an unsupported operator',
            { query: { field: 'email', operator: '~', value: 'ada' } },
            'parameter_invalid',
        ],
        ['a non-string value', { query: { field: 'email', operator: '=', value: 3 } }, 'parameter_invalid'],
        ['per_page over 150', byEmail('a@b.test', { pagination: { per_page: 151 } }), 'parameter_invalid'],
    ])('%s → 400', async (_case, body, code) => {
        const emulator = await start()
        expectError(await call(emulator, 'POST', '/contacts/search', body), 400, code)
    })

    test('does not find a contact created through the API until searchLagMs has passed', async () => {
        const clock = manualClock()
        const emulator = await start({ clock: clock.now, searchLagMs: 60_000 })
        const created = await call(emulator, 'POST', '/contacts', { email: 'new@example.test' })
        expect(created.status).toBe(200)
        const search = () => call(emulator, 'POST', '/contacts/search', byEmail('new@example.test'))
        expect((await search()).body).toMatchObject({ total_count: 0, data: [] })
        // Events by id reach it at once: only search lags.
        const id = (created.body as { id: string }).id
        expect((await call(emulator, 'POST', '/events', event({ id }))).status).toBe(202)
        clock.advance(59_999)
        expect((await search()).body).toMatchObject({ total_count: 0 })
        clock.advance(1)
        expect((await search()).body).toMatchObject({ total_count: 1, data: [{ id }] })
    })
})

describe('contacts', () => {
    async function withPlanAttribute(): Promise<Emulator> {
        const emulator = await start()
        const answer = await call(emulator, 'POST', '/data_attributes', {
            name: 'plan',
            model: 'contact',
            data_type: 'string',
        })
        expect(answer.status).toBe(200)
        return emulator
    }

    test('POST /contacts creates a user by default and returns the contact', async () => {
        const emulator = await withPlanAttribute()
        const answer = await call(emulator, 'POST', '/contacts', {
            email: 'new@example.test',
            external_id: 'ext-new',
            name: 'New',
            signed_up_at: 1_600_000_000,
            custom_attributes: { plan: 'pro' },
        })
        expect(answer.status).toBe(200)
        expect(answer.body).toMatchObject({
            type: 'contact',
            id: expect.stringMatching(/^[0-9a-f]{24}$/),
            workspace_id: expect.any(String),
            role: 'user',
            email: 'new@example.test',
            external_id: 'ext-new',
            name: 'New',
            phone: null,
            signed_up_at: 1_600_000_000,
            last_seen_at: null,
            custom_attributes: { plan: 'pro' },
        })
        expect(emulator.stats().contactsCreated).toBe(1)
        expect(emulator.contacts()).toHaveLength(SEEDS.length + 1)
    })

    test('a lead may share the email of a user, and needs no identifier', async () => {
        const emulator = await start()
        expect(
            (await call(emulator, 'POST', '/contacts', { role: 'user', email: 'bob@example.test' })).status
        ).toBe(200)
        expect((await call(emulator, 'POST', '/contacts', { role: 'lead' })).status).toBe(200)
    })

    test.each([
        ['the email of a user, any case', { email: 'ADA@example.test' }, 'user-ada'],
        ['the email of a lead, as a lead', { role: 'lead', email: 'bob@example.test' }, 'lead-bob'],
        ['an external_id in use', { email: 'other@example.test', external_id: 'ext-ada' }, 'user-ada'],
    ])('409 conflict on %s, naming the existing id', async (_case, body, id) => {
        const emulator = await start()
        const answer = await call(emulator, 'POST', '/contacts', body)
        expectError(answer, 409, 'conflict', `A contact matching those details already exists with id=${id}`)
        expect(emulator.stats().contactsCreated).toBe(0)
    })

    test.each([
        [
            'a user with neither email nor external_id',
            { role: 'user', name: 'x' },
            'parameter_invalid',
            /email or an external_id/,
        ],
        ['an unknown role', { role: 'admin', email: 'x@example.test' }, 'parameter_invalid', /role/],
        ['an invalid email', { email: 'not-an-email' }, 'parameter_invalid', /email/],
        [
            'an unknown custom attribute',
            { email: 'x@example.test', custom_attributes: { tier: 'gold' } },
            'parameter_invalid',
            /^Custom attribute 'tier' does not exist$/,
        ],
        [
            'a custom attribute of the wrong type',
            { email: 'x@example.test', custom_attributes: { plan: 3 } },
            'parameter_invalid',
            /'plan' must be of type string/,
        ],
        [
            'an unknown parameter',
            { email: 'x@example.test', user_id: 'legacy' },
            'bad_request',
            /bad 'user_id' parameter/,
        ],
    ])('POST /contacts with %s → 400', async (_case, body, code, message) => {
        const emulator = await withPlanAttribute()
        expectError(await call(emulator, 'POST', '/contacts', body), 400, code, message)
        expect(emulator.stats().contactsCreated).toBe(0)
    })

    test('PUT /contacts/{id} updates fields and merges custom attributes', async () => {
        const emulator = await withPlanAttribute()
        await call(emulator, 'POST', '/data_attributes', {
            name: 'seats',
            model: 'contact',
            data_type: 'integer',
        })
        await call(emulator, 'PUT', '/contacts/user-ada', { custom_attributes: { plan: 'pro' } })
        const answer = await call(emulator, 'PUT', '/contacts/user-ada', {
            name: 'Ada L.',
            custom_attributes: { seats: 5 },
        })
        expect(answer.status).toBe(200)
        expect(answer.body).toMatchObject({
            id: 'user-ada',
            name: 'Ada L.',
            email: 'ada@example.test',
            custom_attributes: { plan: 'pro', seats: 5 },
        })
        expect(emulator.stats().contactsUpdated).toBe(2)
    })

    test.each([
        ['an unknown contact', '/contacts/nobody', { name: 'x' }, 404, 'not_found'],
        [
            'an email taken by another user',
            '/contacts/lead-bob',
            { role: 'user', email: 'ada@example.test' },
            409,
            'conflict',
        ],
        [
            'an unknown custom attribute',
            '/contacts/user-ada',
            { custom_attributes: { tier: 'gold' } },
            400,
            'parameter_invalid',
        ],
    ])('PUT with %s is refused', async (_case, path, body, status, code) => {
        const emulator = await withPlanAttribute()
        expectError(await call(emulator, 'PUT', path, body), status, code)
        expect(emulator.stats().contactsUpdated).toBe(0)
    })

    test('a changed email is what search and events find from then on', async () => {
        const emulator = await start()
        const put = await call(emulator, 'PUT', '/contacts/user-ada', { email: 'ada@new.test' })
        expect(put.status).toBe(200)
        const search = (value: string) =>
            call(emulator, 'POST', '/contacts/search', { query: { field: 'email', operator: '=', value } })
        expect((await search('ada@new.test')).body).toMatchObject({ data: [{ id: 'user-ada' }] })
        expect((await search('ada@example.test')).body).toMatchObject({ data: [{ id: 'lead-ada' }] })
        const old = event({ id: undefined, email: 'ada@example.test' })
        expect((await call(emulator, 'POST', '/events', old)).status).toBe(404)
        // The old email is free for a user again.
        expect((await call(emulator, 'POST', '/contacts', { email: 'ada@example.test' })).status).toBe(200)
    })

    test('GET /contacts/{id} returns the contact, 404 when unknown', async () => {
        const emulator = await start()
        expect((await call(emulator, 'GET', '/contacts/lead-bob')).body).toMatchObject({
            id: 'lead-bob',
            role: 'lead',
        })
        expectError(await call(emulator, 'GET', '/contacts/nobody'), 404, 'not_found', /^User Not Found$/)
    })
})

describe('data attributes', () => {
    test('POST creates a custom attribute; GET lists it after the standard ones', async () => {
        const emulator = await start()
        const created = await call(emulator, 'POST', '/data_attributes', {
            name: 'plan',
            model: 'contact',
            data_type: 'string',
            description: 'Billing plan',
        })
        expect(created.status).toBe(200)
        expect(created.body).toMatchObject({
            type: 'data_attribute',
            name: 'plan',
            full_name: 'custom_attributes.plan',
            data_type: 'string',
            model: 'contact',
            custom: true,
            description: 'Billing plan',
        })
        const listed = await call(emulator, 'GET', '/data_attributes?model=contact')
        expect(listed.status).toBe(200)
        const data = (listed.body as { data: { name: string; custom: boolean; model: string }[] }).data
        expect(data.find((a) => a.name === 'email')).toMatchObject({ custom: false, model: 'contact' })
        expect(data.filter((a) => a.custom).map((a) => a.name)).toEqual(['plan'])
        expect(data.every((a) => a.model === 'contact')).toBe(true)
        expect(emulator.dataAttributes()).toEqual([{ name: 'plan', data_type: 'string', model: 'contact' }])
    })

    test.each([
        [
            'a name already used',
            { name: 'plan', model: 'company', data_type: 'string' },
            /You already have 'plan'/,
        ],
        [
            'a standard name',
            { name: 'email', model: 'contact', data_type: 'string' },
            /You already have 'email'/,
        ],
        [
            'an unknown model',
            { name: 'x', model: 'ticket', data_type: 'string' },
            /model field must be either contact or company/,
        ],
        [
            'an unknown data type',
            { name: 'x', model: 'contact', data_type: 'mithril' },
            /Data Type isn't an option/,
        ],
        ['an invalid name', { name: '!nv@l!d n@me', model: 'contact', data_type: 'string' }, /alphanumeric/],
    ])('POST with %s → 400 parameter_invalid', async (_case, body, message) => {
        const emulator = await start()
        emulator.addDataAttribute({ name: 'plan', model: 'contact', data_type: 'string' })
        expectError(await call(emulator, 'POST', '/data_attributes', body), 400, 'parameter_invalid', message)
        expect(emulator.dataAttributes()).toHaveLength(1)
    })

    test('seed contacts declare their custom attributes', async () => {
        const emulator = await start({
            contacts: [{ email: 's@example.test', role: 'user', custom_attributes: { seats: 4 } }],
        })
        expect(emulator.dataAttributes()).toEqual([{ name: 'seats', data_type: 'integer', model: 'contact' }])
    })
})

describe('companies', () => {
    test('POST /companies creates, then updates by company_id; attach links a contact', async () => {
        const emulator = await start()
        const created = await call(emulator, 'POST', '/companies', {
            company_id: 'acme',
            name: 'Acme',
            custom_attributes: { tier: 'gold' },
        })
        expect(created.status).toBe(200)
        expect(created.body).toMatchObject({
            type: 'company',
            id: expect.any(String),
            company_id: 'acme',
            name: 'Acme',
            user_count: 0,
            custom_attributes: { tier: 'gold' },
        })
        const id = (created.body as { id: string }).id
        const updated = await call(emulator, 'POST', '/companies', {
            company_id: 'acme',
            name: 'Acme Inc',
            monthly_spend: 155.98,
            custom_attributes: { seats: 9 },
        })
        expect(updated.body).toMatchObject({
            id,
            name: 'Acme Inc',
            monthly_spend: 155,
            custom_attributes: { tier: 'gold', seats: 9 },
        })
        expect(emulator.companies()).toHaveLength(1)

        const attached = await call(emulator, 'POST', '/contacts/user-ada/companies', { id })
        expect(attached.status).toBe(200)
        expect(attached.body).toMatchObject({ type: 'company', id, user_count: 1 })
        expect((await call(emulator, 'POST', '/contacts/user-ada/companies', { id })).body).toMatchObject({
            user_count: 1,
        })
        const ada = emulator.contacts().find((c) => c.id === 'user-ada')
        expect(ada?.companies.data.map((c) => c.id)).toEqual([id])
    })

    test.each([
        ['an unknown contact', '/contacts/nobody/companies', 'known', 404, 'not_found'],
        ['an unknown company', '/contacts/user-ada/companies', 'nope', 404, 'company_not_found'],
        ['no company id', '/contacts/user-ada/companies', undefined, 400, 'parameter_not_found'],
    ])('attach with %s is refused', async (_case, path, companyId, status, code) => {
        const emulator = await start()
        const created = await call(emulator, 'POST', '/companies', { company_id: 'acme' })
        const id = companyId === 'known' ? (created.body as { id: string }).id : companyId
        expectError(await call(emulator, 'POST', path, { id }), status, code)
    })

    test.each([
        ['no company_id', { name: 'Acme' }, 'parameter_not_found'],
        ['an unknown parameter', { company_id: 'acme', test: 'invalid' }, 'bad_request'],
        [
            'a standard attribute as custom',
            { company_id: 'acme', custom_attributes: { industry: 'x' } },
            'parameter_invalid',
        ],
    ])('POST /companies with %s → 400', async (_case, body, code) => {
        const emulator = await start()
        expectError(await call(emulator, 'POST', '/companies', body), 400, code)
    })
})

describe('rate limit', () => {
    const remaining = (answer: Answer) => answer.headers.get('x-ratelimit-remaining')

    test('headers on every answer, 429 past the limit, a fresh budget in the next window', async () => {
        const clock = manualClock()
        const emulator = await start({ clock: clock.now, rateLimit: 3, windowSeconds: 1 })
        const answers = [] as Answer[]
        for (let i = 0; i < 4; i++) answers.push(await call(emulator, 'GET', '/me'))
        expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 429])
        expect(answers.map(remaining)).toEqual(['2', '1', '0', '0'])
        for (const answer of answers) {
            expect(answer.headers.get('x-ratelimit-limit')).toBe('3')
            expect(answer.headers.get('x-ratelimit-reset')).toBe(String(T0 / 1000 + 1))
            expect(answer.headers.get('retry-after')).toBeNull()
        }
        expectError(answers[3], 429, 'rate_limit_exceeded')
        expect(emulator.stats().rateLimited).toBe(1)

        clock.advance(999)
        expect((await call(emulator, 'GET', '/me')).status).toBe(429)
        clock.advance(1)
        const next = await call(emulator, 'GET', '/me')
        expect(next.status).toBe(200)
        expect(remaining(next)).toBe('2')
        expect(next.headers.get('x-ratelimit-reset')).toBe(String(T0 / 1000 + 2))
    })

    test('windows are aligned on the clock, not on the first call', async () => {
        const clock = manualClock(T0 + 7_500)
        const emulator = await start({ clock: clock.now })
        const answer = await call(emulator, 'GET', '/me')
        expect(answer.headers.get('x-ratelimit-reset')).toBe(String(T0 / 1000 + 10))
        expect(remaining(answer)).toBe('1665')
    })

    test('unauthenticated calls do not spend the budget', async () => {
        const clock = manualClock()
        const emulator = await start({ clock: clock.now, rateLimit: 1, windowSeconds: 1 })
        expect((await call(emulator, 'GET', '/me', undefined, { token: 'bad' })).status).toBe(401)
        expect((await call(emulator, 'GET', '/me')).status).toBe(200)
    })
})

describe('faults', () => {
    async function statuses(options: EmulatorOptions, count: number): Promise<number[]> {
        const emulator = await start(options)
        const seen: number[] = []
        for (let i = 0; i < count; i++) seen.push((await call(emulator, 'GET', '/me')).status)
        return seen
    }

    test('errorRate answers that share with 500/502/503, identically for one seed', async () => {
        const first = await statuses({ errorRate: 0.25, seed: 7 }, 250)
        const errors = first.filter((s) => s !== 200)
        expect(errors.length / first.length).toBeGreaterThan(0.18)
        expect(errors.length / first.length).toBeLessThan(0.32)
        expect(new Set(errors)).toEqual(new Set([500, 502, 503]))
        expect(await statuses({ errorRate: 0.25, seed: 7 }, 250)).toEqual(first)
        expect(await statuses({ errorRate: 0.25, seed: 8 }, 250)).not.toEqual(first)
    })

    test('a faulty answer carries the service_unavailable body', async () => {
        const emulator = await start({ errorRate: 1 })
        const answer = await call(emulator, 'POST', '/events', event({}))
        expect([500, 502, 503]).toContain(answer.status)
        expectError(answer, answer.status, 'service_unavailable')
        expect(emulator.events()).toEqual([])
    })

    test('dropRate destroys that share of connections without an answer', async () => {
        const emulator = await start({ dropRate: 0.3, seed: 3 })
        for (let i = 0; i < 200; i++) {
            await call(emulator, 'POST', '/events', event({ created_at: CREATED_AT + i })).catch(
                () => undefined
            )
        }
        const stats = emulator.stats()
        const dropped = stats.byStatus.dropped ?? 0
        expect(dropped / stats.calls).toBeGreaterThan(0.2)
        expect(dropped / stats.calls).toBeLessThan(0.4)
        expect(dropped + (stats.byStatus['202'] ?? 0)).toBe(stats.calls)
        // A dropped request may still have reached Intercom in real life; here it simply was not processed.
        expect(stats.eventsAccepted).toBe(stats.byStatus['202'])
        expect(emulator.requests().filter((r) => r.status === 0)).toHaveLength(dropped)
    })

    test('a dropped request makes fetch fail', async () => {
        const emulator = await start({ dropRate: 1 })
        await expect(call(emulator, 'GET', '/me')).rejects.toThrow()
    })

    test('faults come after auth: a bad token is always 401', async () => {
        const emulator = await start({ errorRate: 1 })
        expect((await call(emulator, 'GET', '/me', undefined, { token: 'bad' })).status).toBe(401)
    })

    test('latency delays but does not change the answer', async () => {
        const emulator = await start({ latencyMs: 20 })
        expect((await call(emulator, 'GET', '/me')).status).toBe(200)
    })
})

describe('control', () => {
    test('configure() revoking the token: 401 from then on, the new token works', async () => {
        const emulator = await start()
        expect((await call(emulator, 'GET', '/me')).status).toBe(200)
        emulator.configure({ tokens: ['rotated'] })
        expectError(await call(emulator, 'GET', '/me'), 401, 'unauthorized', /^Access Token Invalid$/)
        expect((await call(emulator, 'GET', '/me', undefined, { token: 'rotated' })).status).toBe(200)
        expect(emulator.options.tokens).toEqual(['rotated'])
    })

    test('configure() turns faults on and off mid-run and refuses bad values', async () => {
        const emulator = await start()
        emulator.configure({ errorRate: 1 })
        expect((await call(emulator, 'GET', '/me')).status).toBeGreaterThanOrEqual(500)
        emulator.configure({ errorRate: 0 })
        expect((await call(emulator, 'GET', '/me')).status).toBe(200)
        expect(() => emulator.configure({ dropRate: 2 })).toThrow(RangeError)
        expect(() => emulator.configure({ port: emulator.port + 1 })).toThrow(/cannot change/)
        expect(emulator.options.dropRate).toBe(0)
    })

    test('requests() records method, path, status and body, never the token', async () => {
        const emulator = await start()
        const seen: number[] = []
        emulator.onRequest((r) => seen.push(r.status))
        await call(emulator, 'POST', '/events', event({}))
        await call(emulator, 'GET', '/data_attributes?model=contact')
        expect(emulator.requests()).toEqual([
            expect.objectContaining({
                method: 'POST',
                path: '/events',
                status: 202,
                body: event({}),
                at: expect.any(Number),
            }),
            expect.objectContaining({ method: 'GET', path: '/data_attributes', status: 200, body: null }),
        ])
        expect(emulator.requests()[0].headers['intercom-version']).toBe('2.11')
        expect(JSON.stringify(emulator.requests())).not.toContain(TOKEN)
        expect(seen).toEqual([202, 200])
        expect(emulator.stats()).toMatchObject({
            calls: 2,
            byRoute: { 'POST /events': 1, 'GET /data_attributes': 1 },
            byStatus: { '202': 1, '200': 1 },
        })
    })

    test('reset() clears requests, events and stats but keeps contacts', async () => {
        const emulator = await start({ maxEventNames: 1 })
        const { id } = emulator.addContact({ email: 'added@example.test', role: 'user' })
        await call(emulator, 'POST', '/events', event({ id }))
        emulator.reset()
        expect(emulator.requests()).toEqual([])
        expect(emulator.events()).toEqual([])
        expect(emulator.stats()).toMatchObject({ calls: 0, eventsAccepted: 0, byRoute: {}, byStatus: {} })
        expect(emulator.contacts().map((c) => c.id)).toContain(id)
        // Event names were cleared with the events: a new name fits again.
        expect((await call(emulator, 'POST', '/events', event({ id, event_name: 'other' }))).status).toBe(202)
    })

    test('addContact() refuses a duplicate id', async () => {
        const emulator = await start()
        expect(() => emulator.addContact({ id: 'user-ada', email: 'x@example.test', role: 'user' })).toThrow(
            /already exists/
        )
    })
})

describe('emulator-cli', () => {
    test('maps flags to options', () => {
        const files: Record<string, string> = { 'contacts.json': JSON.stringify({ contacts: SEEDS }) }
        const settings = parseCliArgs(
            [
                '--port',
                '4010',
                '--rate-limit',
                '1666',
                '--error-rate',
                '0.2',
                '--token',
                'a',
                '--token',
                'b',
                '--region',
                'AU',
                '--seed-file',
                'contacts.json',
                '--quiet',
            ],
            (path) => files[path]
        )
        expect(settings.quiet).toBe(true)
        expect(settings.options).toMatchObject({
            port: 4010,
            rateLimit: 1666,
            errorRate: 0.2,
            tokens: ['a', 'b'],
            region: 'AU',
            contacts: SEEDS,
        })
        expect(settings.options.latencyMs).toBeUndefined()
    })

    test.each([
        [['--port', 'abc'], /--port needs a number/],
        [['--region', 'EU'], /--region must be one of US, Europe, AU/],
        [['--long-strings', 'cut'], /--long-strings/],
        [['--unknown'], /Unknown option/],
    ])('refuses %j', (argv, message) => {
        expect(() => parseCliArgs(argv)).toThrow(message)
    })

    test('a seed file needs an email and a role per contact', () => {
        expect(parseSeedFile(JSON.stringify(SEEDS), 'seeds.json')).toEqual(SEEDS)
        expect(() => parseSeedFile('[{"email": "a@b.test"}]', 'seeds.json')).toThrow(/contact #1/)
        expect(() => parseSeedFile('{"people": []}', 'seeds.json')).toThrow(/expected a list/)
    })
})
