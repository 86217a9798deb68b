/** Contact and company sync on the wire: creates, updates, conflicts, attribute creation, companies, call counts. */
import { RetryError } from '@posthog/plugin-scaffold'
import nock from 'nock'
import { onEvent, PluginConfig } from '../index'
import {
    allLogs,
    contact,
    errorBody,
    expectCall,
    expectEvent,
    expectSearch,
    makeEvent,
    memoryCache,
    OLD_UNIX,
    setup,
    TOKEN,
    US,
    useNock,
} from './helpers'

const EMAIL = 'ada@example.com'
const CREATE: PluginConfig = {
    contactSync: 'create or update contacts',
    personProperties: 'plan:Plan name,seats',
    triggeringEvents: 'signed_up',
}
const identify = (set: Record<string, unknown>, extra = {}) =>
    makeEvent({
        event: '$identify',
        distinct_id: 'user-42',
        properties: { $set: { email: EMAIL, ...set } },
        ...extra,
    })

useNock()

describe('contact sync', () => {
    test('$identify of a new person creates exactly one contact, and the next event uses its id without a search', async () => {
        const { meta } = await setup(CREATE, { cache: memoryCache() })
        expectSearch(EMAIL, [])
        expectCall(
            'post',
            '/contacts',
            { role: 'user', email: EMAIL, name: 'Ada Lovelace', custom_attributes: { 'Plan name': 'pro' } },
            contact('new1')
        )
        await expect(onEvent(identify({ name: 'Ada Lovelace', plan: 'pro' }), meta)).resolves.toEqual({
            status: 'synced',
            contact: 'created',
        })

        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, id: 'new1', metadata: {} })
        await expect(onEvent(makeEvent(), meta)).resolves.toMatchObject({ status: 'delivered' })
    })

    test('an existing contact is updated; the same values again make no call', async () => {
        const { meta } = await setup(CREATE)
        expectSearch(EMAIL, [contact('c1')])
        expectCall(
            'put',
            '/contacts/c1',
            { name: 'Ada', custom_attributes: { 'Plan name': 'pro', seats: 3 } },
            contact('c1')
        )
        await expect(onEvent(identify({ name: 'Ada', plan: 'pro', seats: 3 }), meta)).resolves.toMatchObject({
            contact: 'updated',
        })
        await expect(onEvent(identify({ name: 'Ada', plan: 'pro', seats: 3 }), meta)).resolves.toMatchObject({
            contact: 'unchanged',
        })

        expectCall(
            'put',
            '/contacts/c1',
            { name: 'Ada', custom_attributes: { 'Plan name': 'team', seats: 3 } },
            contact('c1')
        )
        await expect(onEvent(identify({ name: 'Ada', plan: 'team', seats: 3 }), meta)).resolves.toMatchObject(
            { contact: 'updated' }
        )
    })

    test('409 on create (a race or search lag) → the existing id is updated', async () => {
        const { meta } = await setup(CREATE)
        expectSearch(EMAIL, [])
        nock(US)
            .post('/contacts')
            .reply(
                409,
                errorBody('conflict', 'A contact matching those details already exists with id=abc123')
            )
        expectCall(
            'put',
            '/contacts/abc123',
            { custom_attributes: { 'Plan name': 'pro' } },
            contact('abc123')
        )
        await expect(onEvent(identify({ plan: 'pro' }), meta)).resolves.toMatchObject({ contact: 'created' })
        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, id: 'abc123', metadata: {} })
        await onEvent(makeEvent(), meta)
    })

    test('a stale cached id (contact deleted or merged in Intercom): looked up again, then updated', async () => {
        const { meta } = await setup(CREATE)
        expectSearch(EMAIL, [contact('old')])
        expectCall('put', '/contacts/old', { custom_attributes: { 'Plan name': 'pro' } })
        await onEvent(identify({ plan: 'pro' }), meta)

        nock(US).put('/contacts/old').reply(404, errorBody('not_found', 'User Not Found'))
        expectSearch(EMAIL, [contact('merged')])
        expectCall('put', '/contacts/merged', { custom_attributes: { 'Plan name': 'team' } })
        await expect(onEvent(identify({ plan: 'team' }), meta)).resolves.toMatchObject({ contact: 'updated' })
    })

    test.each(['on', 'update existing contacts'])(
        '"%s" without "Create contacts for unknown people" never creates one',
        async (contactSync) => {
            const { meta } = await setup({ ...CREATE, contactSync })
            expectSearch(EMAIL, [])
            await expect(onEvent(identify({ plan: 'pro' }), meta)).resolves.toMatchObject({
                contact: 'no contact',
            })
        }
    )

    test('"update existing contacts" with nothing mapped in the event: no call at all', async () => {
        const { meta } = await setup({ ...CREATE, contactSync: 'update existing contacts' })
        await expect(onEvent(identify({ unmapped: 'x' }), meta)).resolves.toEqual({
            status: 'synced',
            contact: 'unchanged',
        })
    })

    test('standard attributes: first + last name, phone, external_id from a non-anonymous distinct_id, dates as seconds', async () => {
        const { meta } = await setup({
            ...CREATE,
            personProperties: 'trial_ends_at',
            externalId: 'distinct_id',
        })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', {
            name: 'Ada Lovelace',
            phone: '+44 20 0000 0000',
            external_id: 'user-42',
            custom_attributes: { trial_ends_at: OLD_UNIX },
        })
        const set = {
            first_name: 'Ada',
            last_name: 'Lovelace',
            phone: '+44 20 0000 0000',
            trial_ends_at: '2024-05-01T12:00:00Z',
        }
        await onEvent(identify(set), meta)
    })

    test('an anonymous distinct_id never becomes the external_id', async () => {
        const { meta } = await setup({ ...CREATE, externalId: 'distinct_id' })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', { custom_attributes: { 'Plan name': 'pro' } })
        const anonymous = makeEvent({
            event: '$pageview',
            distinct_id: 'dev-1',
            properties: { $device_id: 'dev-1', $set: { email: EMAIL, plan: 'pro' } },
        })
        await onEvent(anonymous, meta)
    })

    test("Intercom's own contact fields (signed_up_at, …) go top level, typed", async () => {
        const { meta } = await setup({
            ...CREATE,
            personProperties: 'signed_up_at,unsubscribed:unsubscribed_from_emails,plan:Plan name',
        })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', {
            signed_up_at: OLD_UNIX,
            unsubscribed_from_emails: true,
            custom_attributes: { 'Plan name': 'pro' },
        })
        await onEvent(
            identify({ signed_up_at: '2024-05-01T12:00:00Z', unsubscribed: 'true', plan: 'pro' }),
            meta
        )
    })

    test('external_id from a property', async () => {
        const { meta } = await setup({
            ...CREATE,
            externalId: 'property',
            externalIdProperty: 'account_id',
            personProperties: '',
        })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', { external_id: '991' })
        await onEvent(identify({ account_id: 991 }), meta)
    })

    test('nested values become parent_child attributes, named from the renamed property', async () => {
        const { meta, logs } = await setup(CREATE)
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', {
            custom_attributes: { 'Plan name_tier': 'gold', 'Plan name_limits_max_seats': 5, seats: 2 },
        })
        await onEvent(identify({ plan: { tier: 'gold', limits: { 'max.seats': 5 } }, seats: 2 }), meta)
        expect(logs.join('\n')).not.toMatch(/not synced/)
    })

    test('nesting past 3 levels or 20 keys is cut, logged naming the property, not its value', async () => {
        const { meta, logs } = await setup({ ...CREATE, personProperties: 'deep,wide' })
        const wide = Object.fromEntries([...Array(25)].map((_, i) => [`k${i}`, i]))
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', {
            custom_attributes: {
                deep_a_b_ok: 'secret-ok',
                ...Object.fromEntries([...Array(20)].map((_, i) => [`wide_k${i}`, i])),
            },
        })
        const deep = { a: { b: { ok: 'secret-ok', c: { d: 'secret-value' } } } }
        await onEvent(identify({ deep, wide }), meta)
        expect(logs.join('\n')).toMatch(/not synced in whole .*: deep, wide\./)
        expect(logs.join('\n')).not.toContain('secret')
    })

    test('`*` syncs every person property not starting with $, the email excepted', async () => {
        const { meta } = await setup({ ...CREATE, personProperties: '*' })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', {
            name: 'Ada',
            custom_attributes: { plan: 'pro', company_size: 3, tags: '["a","b"]' },
        })
        await onEvent(
            identify({
                name: 'Ada',
                plan: 'pro',
                $browser: 'Firefox',
                company: { size: 3 },
                tags: ['a', 'b'],
            }),
            meta
        )
    })

    test('last_seen_at from the event time; unchanged values within the hour make no call; off on request', async () => {
        // Two event times in one clock hour, both recent.
        const time = Math.floor((Date.now() / 1000 - 120) / 3600) * 3600
        const at = (seconds: number) => new Date(seconds * 1000).toISOString()
        const { meta } = await setup(CREATE, { cache: memoryCache() })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', { last_seen_at: time, custom_attributes: { 'Plan name': 'pro' } })
        await onEvent(identify({ plan: 'pro' }, { timestamp: at(time) }), meta)
        // Same values 59 s later, within the same hour: nothing to send.
        await expect(onEvent(identify({ plan: 'pro' }, { timestamp: at(time + 59) }), meta)).resolves.toEqual(
            {
                status: 'synced',
                contact: 'unchanged',
            }
        )

        const off = await setup({ ...CREATE, updateLastSeen: 'No' })
        expectSearch(EMAIL, [contact('c1')])
        expectCall('put', '/contacts/c1', { custom_attributes: { 'Plan name': 'pro' } })
        await onEvent(identify({ plan: 'pro' }, { timestamp: at(time) }), off.meta)
    })

    test('the role chosen for unknown people applies to contacts the sync creates', async () => {
        const { meta } = await setup({ ...CREATE, contactSync: 'on', createContacts: 'as lead' })
        expectSearch(EMAIL, [])
        expectCall(
            'post',
            '/contacts',
            { role: 'lead', email: EMAIL, custom_attributes: { 'Plan name': 'pro' } },
            contact('l1', 'lead')
        )
        await expect(onEvent(identify({ plan: 'pro' }), meta)).resolves.toMatchObject({ contact: 'created' })
    })

    test('a 409 that names no contact id is retried later (search lag), not reported as permanent', async () => {
        const { meta } = await setup(CREATE)
        expectSearch(EMAIL, [])
        nock(US)
            .post('/contacts')
            .reply(409, errorBody('conflict', 'A contact matching those details already exists'))
        const failure = onEvent(identify({ plan: 'pro' }), meta)
        await expect(failure).rejects.toBeInstanceOf(RetryError)
        await expect(failure).rejects.toThrow(/already exists \(no contact id given: retried later\)/)
    })

    test.each([401, 404, 400])(
        'a %i whose body says a custom attribute does not exist is reported as that, not as the API key',
        async (status) => {
            const { meta } = await setup(CREATE)
            expectSearch(EMAIL, [contact('c1')])
            nock(US)
                .put('/contacts/c1')
                .reply(status, errorBody('parameter_invalid', "Custom attribute 'Plan name' does not exist"))
            const failure = onEvent(identify({ plan: 'pro' }), meta)
            await expect(failure).rejects.toThrow(
                /^Intercom refused the contact or company sync because a custom attribute does not exist, and it will not be retried\. Intercom answered \d+ to PUT \/contacts\/c1: Custom attribute 'Plan name' does not exist\. Create the custom attribute/
            )
            await expect(failure).rejects.not.toBeInstanceOf(RetryError)
        }
    )

    test('matched by external ID: a person without email is created by external_id', async () => {
        const { meta } = await setup({
            ...CREATE,
            contactIdentifier: 'external ID',
            externalId: 'distinct_id',
        })
        nock(US)
            .post('/contacts/search', {
                query: { field: 'external_id', operator: '=', value: 'user-42' },
                pagination: { per_page: 50 },
            })
            .reply(200, { type: 'list', data: [], total_count: 0 })
        expectCall(
            'post',
            '/contacts',
            { role: 'user', external_id: 'user-42', custom_attributes: { 'Plan name': 'pro' } },
            contact('x1')
        )
        const noEmail = makeEvent({
            event: '$identify',
            distinct_id: 'user-42',
            properties: { $set: { plan: 'pro' } },
        })
        await expect(onEvent(noEmail, meta)).resolves.toMatchObject({ contact: 'created' })
    })

    test('matched by external ID with an email known: the created contact gets both', async () => {
        const { meta } = await setup({
            ...CREATE,
            contactIdentifier: 'external ID',
            externalId: 'distinct_id',
        })
        nock(US).post('/contacts/search').reply(200, { type: 'list', data: [], total_count: 0 })
        expectCall(
            'post',
            '/contacts',
            { role: 'user', external_id: 'user-42', email: EMAIL, custom_attributes: { 'Plan name': 'pro' } },
            contact('x1')
        )
        await onEvent(identify({ plan: 'pro' }), meta)
    })

    test('missing custom attributes are created once, then remembered', async () => {
        const { meta } = await setup({ ...CREATE, createAttributes: 'Yes' }, { cache: memoryCache() })
        expectCall('post', '/data_attributes', { name: 'Plan name', model: 'contact', data_type: 'string' })
        nock(US)
            .post('/data_attributes', { name: 'seats', model: 'contact', data_type: 'integer' })
            .reply(400, errorBody('parameter_invalid', "You already have 'seats' in your people data."))
        expectSearch(EMAIL, [contact('c1')])
        nock(US).put('/contacts/c1').twice().reply(200, contact('c1'))
        await onEvent(identify({ plan: 'pro', seats: 2 }), meta)
        await onEvent(identify({ plan: 'team', seats: 5 }), meta)
    })

    test('an unknown attribute without auto-create: a clear error naming it, not retried', async () => {
        const { meta } = await setup(CREATE)
        expectSearch(EMAIL, [contact('c1')])
        nock(US)
            .put('/contacts/c1')
            .reply(400, errorBody('parameter_invalid', "Custom attribute 'Plan name' does not exist"))
        const failure = onEvent(identify({ plan: 'pro' }), meta)
        await expect(failure).rejects.toThrow(
            /Intercom refused the contact or company sync.*'Plan name' does not exist.*Create missing custom attributes/
        )
        await expect(failure).rejects.not.toBeInstanceOf(RetryError)
    })

    test('a transient sync failure does not hold back the event, then asks for a retry', async () => {
        const { meta } = await setup({ ...CREATE, triggeringEvents: '$identify' })
        expectSearch(EMAIL, [contact('c1')])
        nock(US).put('/contacts/c1').twice().reply(503, '')
        expectEvent({ event_name: '$identify', created_at: OLD_UNIX, id: 'c1', metadata: {} })
        await expect(onEvent(identify({ plan: 'pro' }), meta)).rejects.toThrow(RetryError)
    })
})

describe('contacts for unknown emails', () => {
    test.each([
        ['as lead', 'lead'],
        ['as user', 'user'],
    ])('%s: created, then the event posted by its id on the first try', async (choice, role) => {
        const { meta } = await setup({ createContacts: choice }, { cache: memoryCache() })
        expectSearch(EMAIL, [])
        expectCall('post', '/contacts', { role, email: EMAIL }, contact('n1', role as 'user'))
        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, id: 'n1', metadata: {} })
        await expect(onEvent(makeEvent(), meta).then((o) => o.status)).resolves.toBe('delivered')
    })
})

describe('company sync', () => {
    const COMPANY: PluginConfig = {
        companyGroupType: 'company',
        companyProperties: 'plan,employees:Employees',
        triggeringEvents: 'signed_up',
    }
    const groupIdentify = (set: Record<string, unknown>) =>
        makeEvent({
            event: '$groupidentify',
            properties: { $group_type: 'company', $group_key: 'acme', $group_set: set },
        })

    test('$groupidentify creates the company; the same values make no call; a person event attaches once', async () => {
        const { meta } = await setup(COMPANY, { cache: memoryCache() })
        expectCall(
            'post',
            '/companies',
            { company_id: 'acme', name: 'Acme', plan: 'pro', custom_attributes: { Employees: 40 } },
            { type: 'company', id: 'co1', company_id: 'acme' }
        )
        await expect(
            onEvent(groupIdentify({ name: 'Acme', plan: 'pro', employees: 40 }), meta)
        ).resolves.toEqual({ status: 'synced', company: 'updated' })
        await expect(
            onEvent(groupIdentify({ name: 'Acme', plan: 'pro', employees: 40 }), meta)
        ).resolves.toEqual({ status: 'synced', company: 'unchanged' })

        expectSearch(EMAIL, [contact('c1')])
        expectCall('post', '/contacts/c1/companies', { id: 'co1' }, { type: 'company', id: 'co1' })
        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, id: 'c1', metadata: {} })
        const withGroup = makeEvent({ properties: { email: EMAIL, $groups: { company: 'acme' } } })
        await expect(onEvent(withGroup, meta)).resolves.toEqual({ status: 'delivered', attached: true })

        expectEvent({ event_name: 'signed_up', created_at: OLD_UNIX, id: 'c1', metadata: {} })
        await expect(onEvent(withGroup, meta)).resolves.toEqual({ status: 'delivered', attached: false })
    })

    test("Intercom's own company fields (industry, size, …) go top level, not into custom attributes", async () => {
        const { meta } = await setup({
            ...COMPANY,
            companyProperties: 'industry,headcount:size,monthly_spend,tier',
        })
        expectCall(
            'post',
            '/companies',
            {
                company_id: 'acme',
                industry: 'Retail',
                size: 40,
                monthly_spend: 99,
                custom_attributes: { tier: 'gold' },
            },
            { type: 'company', id: 'co1' }
        )
        await onEvent(
            groupIdentify({ industry: 'Retail', headcount: '40', monthly_spend: 99.4, tier: 'gold' }),
            meta
        )
    })

    test('a company never identified is created by its key when a person is attached', async () => {
        const { meta } = await setup(COMPANY)
        expectSearch(EMAIL, [contact('c1')])
        expectCall('post', '/companies', { company_id: 'globex' }, { type: 'company', id: 'co9' })
        expectCall('post', '/contacts/c1/companies', { id: 'co9' })
        const pageview = makeEvent({
            event: '$pageview',
            properties: { email: EMAIL, $groups: { company: 'globex' } },
        })
        await expect(onEvent(pageview, meta)).resolves.toEqual({ status: 'synced', attached: true })
    })

    test('another group type is not a company', async () => {
        const { meta } = await setup(COMPANY)
        const other = makeEvent({
            event: '$groupidentify',
            properties: { $group_type: 'team', $group_key: 't1', $group_set: {} },
        })
        await expect(onEvent(other, meta)).resolves.toEqual({ status: 'synced', company: 'unchanged' })
    })
})

test('no log line of this suite holds the token or an email', () => {
    expect(allLogs.join('\n')).not.toContain(TOKEN)
    expect(allLogs.join('\n')).not.toMatch(/[a-z0-9.+-]+@[a-z0-9-]+\.[a-z]/i)
})
