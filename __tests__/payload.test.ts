/** Pure functions: filtering, email lookup and the POST /events body. No network. */
import type { ProcessedPluginEvent } from '@posthog/plugin-scaffold'
import {
    buildEventDraft,
    buildMetadata,
    findEmail,
    findPerson,
    flatten,
    identityFromText,
    identityText,
    isIgnoredDomain,
    normalizeEmail,
    parseConfig,
    pickContact,
    planWork,
    revenueValue,
    shapedValue,
    toUnixSeconds,
} from '../index'
import { makeEvent, OLD_UNIX, TOKEN } from './helpers'

const settings = (extra = {}) =>
    parseConfig({ intercomApiKey: TOKEN, triggeringEvents: 'signed_up', ...extra })
const listed = (fields: string) => settings({ metadataProperties: fields }).metadata
const ALL = settings({ metadataProperties: '*' }).metadata

describe('planWork: what an event asks for', () => {
    const sync = settings({ contactSync: 'update existing contacts', companyGroupType: 'company' })
    test.each<[string, Partial<ProcessedPluginEvent>, object]>([
        [
            'a triggering event',
            {},
            { deliver: true, syncPerson: false, syncCompany: false, companyKey: null },
        ],
        ['another event', { event: '$pageview' }, { deliver: false, syncPerson: false }],
        ['$identify syncs the person', { event: '$identify' }, { deliver: false, syncPerson: true }],
        [
            '$set in properties',
            { event: '$pageview', properties: { $set: { plan: 'pro' } } },
            { syncPerson: true },
        ],
        ['top-level $set_once', { event: '$pageview', $set_once: { plan: 'pro' } }, { syncPerson: true }],
        ['empty $set', { event: '$pageview', $set: {} }, { syncPerson: false }],
        ['$groupidentify', { event: '$groupidentify' }, { syncCompany: true }],
        [
            '$groups names a company',
            { event: '$pageview', properties: { $groups: { company: 'acme' } } },
            { companyKey: 'acme' },
        ],
        [
            '$groups of another type',
            { event: '$pageview', properties: { $groups: { team: 'x' } } },
            { companyKey: null },
        ],
    ])('%s', (_name, overrides, expected) => {
        expect(planWork(makeEvent(overrides), sync)).toMatchObject(expected)
    })

    test('with sync off, only triggering events matter', () => {
        expect(planWork(makeEvent({ event: '$identify', $set: { plan: 'pro' } }), settings())).toEqual({
            deliver: false,
            syncPerson: false,
            syncCompany: false,
            companyKey: null,
        })
    })
})

describe('normalizeEmail', () => {
    test.each<[unknown, string | null]>([
        ['  Ada@Example.COM ', 'ada@example.com'],
        ['first.last+tag@mail.example.co.uk', 'first.last+tag@mail.example.co.uk'],
        ['josé@exämple.de', 'josé@exämple.de'],
        ['', null],
        ['   ', null],
        ['ada', null],
        ['ada@', null],
        ['@example.com', null],
        ['ada@example', null],
        ['ada@@example.com', null],
        ['ada lovelace@example.com', null],
        ['ada@exa mple.com', null],
        ['<ada@example.com>', null],
        [`${'a'.repeat(65)}@example.com`, null],
        [`a@${'b'.repeat(300)}.com`, null],
        [42, null],
        [null, null],
        [{ email: 'a@b.co' }, null],
        [['a@b.co'], null],
    ])('%p → %p', (input, expected) => {
        expect(normalizeEmail(input)).toBe(expected)
    })
})

describe('findEmail looks in order and goes on past invalid values', () => {
    const email = 'ada@example.com'
    test.each<
        [
            string,
            Partial<ProcessedPluginEvent>,
            { properties?: Record<string, unknown> } | undefined,
            string | null,
        ]
    >([
        ['event property', { properties: { email } }, undefined, email],
        ['top-level $set', { properties: {}, $set: { email } }, undefined, email],
        ['properties.$set', { properties: { $set: { email } } }, undefined, email],
        ['$set_once', { properties: {}, $set_once: { email } }, undefined, email],
        ['properties.$set_once', { properties: { $set_once: { email } } }, undefined, email],
        ['person properties', { properties: {} }, { properties: { email } }, email],
        [
            'distinct_id that is an email',
            { properties: {}, distinct_id: 'Ada@Example.com' },
            undefined,
            email,
        ],
        [
            'invalid property, valid $set',
            { properties: { email: 'nope' }, $set: { email } },
            undefined,
            email,
        ],
        ['non-string property, valid person', { properties: { email: 7 } }, { properties: { email } }, email],
        [
            'property wins over $set',
            { properties: { email }, $set: { email: 'b@example.com' } },
            undefined,
            email,
        ],
        ['nowhere', { properties: {}, distinct_id: 'anon-123' }, undefined, null],
        ['properties missing', { properties: undefined, distinct_id: 'x' }, undefined, null],
        [
            '$set not an object',
            { properties: { $set: 'x' }, $set: null as unknown as undefined },
            undefined,
            null,
        ],
    ])('%s', (_name, overrides, person, expected) => {
        expect(findEmail(makeEvent({ distinct_id: 'user-1', ...overrides }), person, 'email')).toBe(expected)
    })

    test('a custom email property', () => {
        const event = makeEvent({ properties: { email: 'wrong@example.com', work_email: 'ada@example.com' } })
        expect(findEmail(event, undefined, 'work_email')).toBe('ada@example.com')
    })
})

describe('isIgnoredDomain', () => {
    test.each<[string, boolean]>([
        ['a@example.com', true],
        ['a@mail.example.com', true],
        ['a@notexample.com', false],
        ['a@example.com.evil.io', false],
        ['a@other.org', false],
    ])('%s', (email, ignored) => {
        expect(isIgnoredDomain(email, settings({ ignoredEmailDomains: 'Example.COM' }).ignoredDomains)).toBe(
            ignored
        )
    })

    test('mixed-case email against the list, as onEvent sees it (lower-cased)', () => {
        const email = normalizeEmail('a@Mail.Example.com')!
        expect(isIgnoredDomain(email, settings({ ignoredEmailDomains: 'example.com' }).ignoredDomains)).toBe(
            true
        )
    })
})

describe('toUnixSeconds', () => {
    test.each<[unknown, number | null]>([
        ['2024-05-01T12:00:00.000Z', OLD_UNIX],
        ['2024-05-01T12:00:00.999Z', OLD_UNIX],
        ['2024-05-01T14:00:00+02:00', OLD_UNIX],
        ['2024-05-01 12:00:00', OLD_UNIX],
        ['2024-05-01 12:00:00.000', OLD_UNIX],
        [OLD_UNIX, OLD_UNIX],
        [OLD_UNIX * 1000 + 123, OLD_UNIX],
        [String(OLD_UNIX), OLD_UNIX],
        [new Date(OLD_UNIX * 1000), OLD_UNIX],
        ['3000-01-01T00:00:00Z', null],
        [99_000_000_000, null],
        [1e300, null],
        ['not a date', null],
        ['', null],
        [-5, null],
        [NaN, null],
        [Infinity, null],
        [null, null],
        [{}, null],
    ])('%p → %p', (input, expected) => {
        expect(toUnixSeconds(input)).toBe(expected)
    })
})

describe('buildMetadata', () => {
    test('listed properties in the configured order, renamed, flat, typed for Intercom', () => {
        const metadata = buildMetadata(
            { plan: 'pro', seats: 12, trial: true, $current_url: 'https://app.example.com/a', ignored: 'x' },
            listed('$current_url:url,plan,seats,trial,missing')
        )
        expect(metadata).toEqual({ url: 'https://app.example.com/a', plan: 'pro', seats: 12, trial: 'true' })
        expect(Object.keys(metadata)).toEqual(['url', 'plan', 'seats', 'trial'])
    })

    test('`*`: every non-$ property, at most 10 keys, in the event order', () => {
        const properties: Record<string, unknown> = { $lib: 'web', $set: { a: 1 } }
        for (let i = 0; i < 10_000; i++) properties[`p${i}`] = i
        expect(buildMetadata(properties, ALL)).toEqual(
            Object.fromEntries([...Array(10)].map((_, i) => [`p${i}`, i]))
        )
    })

    test.each<[string, unknown, unknown]>([
        ['long string cut to 255', 'x'.repeat(1000), 'x'.repeat(255)],
        ['surrogate pair not split', 'x'.repeat(254) + '😀', 'x'.repeat(254)],
        ['number', 3.5, 3.5],
        ['NaN dropped', NaN, undefined],
        ['Infinity dropped', Infinity, undefined],
        ['boolean as string', false, 'false'],
        ['null dropped', null, undefined],
        ['small object as compact JSON', { a: 1, b: [1, 2] }, '{"a":1,"b":[1,2]}'],
        ['array as compact JSON', ['a', 'b'], '["a","b"]'],
        ['big object dropped, not cut', { text: 'y'.repeat(300) }, undefined],
    ])('value: %s', (_name, value, expected) => {
        expect(buildMetadata({ v: value }, listed('v'))).toEqual(
            expected === undefined ? {} : { v: expected }
        )
    })

    test('deeply nested values do not crash', () => {
        let deep: Record<string, unknown> = {}
        const root = deep
        for (let i = 0; i < 100_000; i++) deep = deep.next = {}
        expect(buildMetadata({ deep: root, ok: 1 }, ALL)).toEqual({ ok: 1 })
    })

    test('keys ending in _date become Unix seconds; unreadable dates are dropped', () => {
        expect(
            buildMetadata(
                { trial_end_date: '2024-05-01T12:00:00Z', renewal_date: OLD_UNIX * 1000, bad_date: 'soon' },
                ALL
            )
        ).toEqual({ trial_end_date: OLD_UNIX, renewal_date: OLD_UNIX })
    })

    test('keys lose `$` and `.`; a key that becomes empty or repeats is dropped', () => {
        expect(buildMetadata({ 'a.b': 1, c$d: 2, $: 3, a_b: 4 }, listed('a.b,c$d,$,a_b'))).toEqual({
            a_b: 1,
            cd: 2,
        })
    })

    test('__proto__ and constructor keys stay plain data', () => {
        const properties = JSON.parse('{"__proto__": {"polluted": 1}, "constructor": "x"}')
        const metadata = buildMetadata(properties, ALL)
        expect(Object.getPrototypeOf(metadata)).toBe(Object.prototype)
        expect(JSON.parse(JSON.stringify(metadata))).toEqual({
            ['__proto__']: '{"polluted":1}',
            constructor: 'x',
        })
        expect(({} as Record<string, unknown>).polluted).toBeUndefined()
    })

    test.each<[string, Record<string, unknown>, unknown]>([
        [
            '19.99 usd, rounded not truncated',
            { revenue: 19.99, currency: 'USD' },
            { amount: 1999, currency: 'usd' },
        ],
        ['numeric string', { revenue: '0.29', currency: 'eur' }, { amount: 29, currency: 'eur' }],
        ['price', { price: 5, currency: 'gbp' }, { amount: 500, currency: 'gbp' }],
        ['zero-decimal currency', { revenue: 1200, currency: 'JPY' }, { amount: 1200, currency: 'jpy' }],
        ['three-decimal currency', { revenue: 1.234, currency: 'KWD' }, { amount: 1234, currency: 'kwd' }],
    ])('monetary amount: %s', (_name, properties, expected) => {
        const key = 'revenue' in properties ? 'revenue' : 'price'
        expect(buildMetadata(properties, ALL)).toEqual({ [key]: expected })
    })

    test('revenue without a valid currency stays a number, and a listed currency is kept', () => {
        expect(buildMetadata({ revenue: 1e20, currency: 'usd' }, ALL)).toEqual({
            revenue: 1e20,
            currency: 'usd',
        })
        expect(buildMetadata({ revenue: 19.99, currency: 'dollars' }, ALL)).toEqual({
            revenue: 19.99,
            currency: 'dollars',
        })
        expect(buildMetadata({ revenue: 2, currency: 'usd' }, listed('revenue,currency'))).toEqual({
            revenue: { amount: 200, currency: 'usd' },
            currency: 'usd',
        })
    })

    test('the input is not modified', () => {
        const properties = { revenue: 1, currency: 'usd', 'a.b': { c: 1 } }
        const copy = JSON.parse(JSON.stringify(properties))
        buildMetadata(properties, ALL)
        expect(properties).toEqual(copy)
    })
})

describe('buildEventDraft', () => {
    test('maps the event name and keeps created_at', () => {
        const draft = buildEventDraft(
            makeEvent({ event: '$identify', properties: { plan: 'pro' } }),
            OLD_UNIX,
            settings({ eventNameMapping: '$identify:identified', metadataProperties: 'plan' })
        )
        expect(draft).toEqual({ event_name: 'identified', created_at: OLD_UNIX, metadata: { plan: 'pro' } })
    })
})

describe('pickContact', () => {
    test.each<[string, object[], string | null]>([
        ['none', [], null],
        ['a lead only', [{ id: 'l1', role: 'lead' }], 'l1'],
        [
            'user over a newer lead',
            [
                { id: 'l1', role: 'lead', updated_at: 9 },
                { id: 'u1', role: 'user', updated_at: 1 },
            ],
            'u1',
        ],
        [
            'most recently updated user',
            [
                { id: 'u1', role: 'user', updated_at: 1 },
                { id: 'u2', role: 'user', updated_at: 5 },
            ],
            'u2',
        ],
        ['entries without id ignored', [{ role: 'user' }, { id: 'l1', role: 'lead' }], 'l1'],
    ])('%s', (_name, contacts, expected) => {
        expect(pickContact(contacts)).toBe(expected)
    })
})

describe('revenueValue: Intercom documents a positive integer amount', () => {
    test.each<[string, unknown, unknown, unknown]>([
        ['positive, rounded to minor units', 19.99, 'EUR', { amount: 1999, currency: 'eur' }],
        ['zero stays a number', 0, 'EUR', 0],
        ['negative stays a number', -3, 'usd', -3],
        ['rounds to 0: a number', 0.004, 'usd', 0.004],
        ['numeric string', '2.5', 'usd', { amount: 250, currency: 'usd' }],
        ['no valid currency: left alone', 5, 'dollars', undefined],
        ['not a number: left alone', 'free', 'usd', undefined],
    ])('%s', (_name, value, currency, expected) => {
        expect(revenueValue(value, currency)).toEqual(expected)
    })
})

describe('shapedValue: objects already in an Intercom metadata type', () => {
    test.each<[string, object, unknown]>([
        ['monetary amount', { amount: 34999, currency: 'EUR' }, { amount: 34999, currency: 'eur' }],
        ['keys in any order', { currency: 'eur', amount: 5 }, { amount: 5, currency: 'eur' }],
        [
            'a fractional amount is rounded (already minor units)',
            { amount: 99.6, currency: 'eur' },
            { amount: 100, currency: 'eur' },
        ],
        ['amount 0: a plain number', { amount: 0, currency: 'eur' }, 0],
        ['negative amount: a plain number', { amount: -100, currency: 'eur' }, -100],
        ['bad currency: dropped', { amount: 5, currency: 'euros' }, null],
        ['amount not a number: dropped', { amount: 'lots', currency: 'eur' }, null],
        ['unsafe amount: dropped', { amount: 1e20, currency: 'eur' }, null],
        [
            'rich link',
            { url: 'https://example.org/a', value: 'A' },
            { url: 'https://example.org/a', value: 'A' },
        ],
        [
            'rich link label cut to 255',
            { url: 'http://x.io', value: 'v'.repeat(300) },
            { url: 'http://x.io', value: 'v'.repeat(255) },
        ],
        ['rich link to a non-http URL: dropped', { url: 'ftp://x.io', value: 'A' }, null],
        ['rich link without a URL: dropped', { url: 'not a url', value: 'A' }, null],
        ['rich link with an empty label: dropped', { url: 'https://x.io', value: ' ' }, null],
        ['another object: not a shape', { amount: 5, currency: 'eur', note: 'x' }, undefined],
    ])('%s', (_name, value, expected) => {
        expect(shapedValue(value)).toEqual(expected)
    })
})

describe('flatten: nested person and company values become parent_child keys, bounded', () => {
    test('three levels below the property, keys cleaned', () => {
        expect(flatten('p', { a: { 'b.c': { d: 1 } }, $e: 2 })).toEqual({
            entries: [
                ['p_a_b_c_d', 1],
                ['p_e', 2],
            ],
            complete: true,
        })
    })

    test('a fourth level is cut and reported', () => {
        expect(flatten('p', { a: { b: { c: { d: 1 } } }, ok: 1 })).toEqual({
            entries: [['p_ok', 1]],
            complete: false,
        })
    })

    test('at most 20 keys per property', () => {
        const wide = Object.fromEntries([...Array(30)].map((_, i) => [`k${i}`, i]))
        const { entries, complete } = flatten('w', wide)
        expect(entries).toHaveLength(20)
        expect(complete).toBe(false)
    })

    test('a scalar is itself', () => {
        expect(flatten('p', 'x')).toEqual({ entries: [['p', 'x']], complete: true })
    })
})

describe('findPerson: who the event is about, by the configured identifier', () => {
    const byId = (choice: string, extra = {}) =>
        settings({ contactIdentifier: choice, externalId: 'distinct_id', ...extra })
    test.each<[string, ReturnType<typeof settings>, Partial<ProcessedPluginEvent>, unknown]>([
        [
            'email',
            settings(),
            {},
            { identity: { kind: 'email', value: 'ada@example.com' }, email: 'ada@example.com' },
        ],
        [
            'external ID: distinct_id, email kept for creation',
            byId('external ID'),
            {},
            { identity: { kind: 'user_id', value: 'user-1' }, email: 'ada@example.com' },
        ],
        [
            'external ID wins over email in the fallback mode',
            byId('external ID, else email'),
            {},
            { identity: { kind: 'user_id', value: 'user-1' }, email: 'ada@example.com' },
        ],
        [
            'fallback to the email for an anonymous distinct_id',
            byId('external ID, else email'),
            { properties: { email: 'ada@example.com', $is_identified: false } },
            { identity: { kind: 'email', value: 'ada@example.com' }, email: 'ada@example.com' },
        ],
        [
            'from $set, trimmed, numbers as text',
            settings({ contactIdentifier: 'external ID', externalId: 'property', externalIdProperty: 'uid' }),
            { properties: { $set: { uid: 42 } } },
            { identity: { kind: 'user_id', value: '42' }, email: null },
        ],
        ['no email', settings(), { properties: {}, distinct_id: 'x' }, { skip: 'no valid email' }],
        [
            'no external ID',
            byId('external ID'),
            { properties: { $is_identified: false } },
            { skip: 'no external ID' },
        ],
    ])('%s', (_name, parsed, overrides, expected) => {
        expect(findPerson(makeEvent(overrides), undefined, parsed)).toEqual(expected)
    })

    test('identityText keeps the email as it was (cache keys, queued items) and round-trips', () => {
        expect(identityText({ kind: 'email', value: 'ada@example.com' })).toBe('ada@example.com')
        for (const identity of [
            { kind: 'email', value: 'ada@example.com' },
            { kind: 'user_id', value: 'a:b' },
        ] as const) {
            expect(identityFromText(identityText(identity))).toEqual(identity)
        }
    })
})
