/** End-to-end tests: the real index.ts against the local Intercom emulator.
 *
 * The plugin is loaded as PostHog loads it (harness), and the emulator runs on loopback. The three cases the core issue names: a lead, revenue, and a retry after 429.
 */
import { createHarness, Harness, HarnessEvent, HarnessMode } from '../tools/runtime/harness'
import { Emulator, startEmulator } from '../tools/intercom/emulator'

const TOKEN = 'test-token'
const CREATED_AT = 1714564800
const config = {
    intercomApiKey: TOKEN,
    region: 'US',
    triggeringEvents: 'signed_up,purchase',
    eventNameMapping: 'purchase:purchased',
    metadataProperties: 'plan,revenue,currency',
}

function event(uuid: string, name: string, properties: Record<string, unknown>): HarnessEvent {
    return {
        uuid,
        event: name,
        distinct_id: uuid,
        timestamp: new Date(CREATED_AT * 1000).toISOString(),
        properties,
    }
}

let emulator: Emulator
let harness: Harness | undefined
/** The emulator's clock, when a test needs to move between rate-limit windows. */
let clockMs: number | null = null

beforeEach(async () => {
    clockMs = null
    emulator = await startEmulator({
        clock: () => clockMs ?? Date.now(),
        tokens: [TOKEN],
        contacts: [
            { id: 'lead-1', email: 'lead@example.com', role: 'lead' },
            { id: 'user-1', email: 'buyer@example.com', role: 'user' },
            { id: 'user-2', email: 'acct@example.com', role: 'user', external_id: 'acct-2' },
            { id: 'lead-2', email: 'visitor@example.com', role: 'lead', external_id: 'visitor-9' },
        ],
    })
})
afterEach(async () => {
    await harness?.close()
    harness = undefined
    await emulator.close()
})

const modes: HarnessMode[] = ['plugin-server', 'cdp']

describe.each(modes)('%s runtime', (mode) => {
    test('an event of a lead lands on the lead, by contact id', async () => {
        harness = await createHarness({ mode, config, emulatorUrl: emulator.url, minuteMs: 0 })
        const summary = await harness.run([
            event('e1', 'signed_up', { email: 'Lead@Example.com', plan: 'pro' }),
        ])
        expect(summary.delivered).toBe(1)
        expect(emulator.events()).toEqual([
            {
                event_name: 'signed_up',
                created_at: CREATED_AT,
                contact_id: 'lead-1',
                metadata: { plan: 'pro' },
                received: 1,
            },
        ])
    })

    test('revenue arrives as a monetary amount in minor units, under the mapped name', async () => {
        harness = await createHarness({ mode, config, emulatorUrl: emulator.url, minuteMs: 0 })
        await harness.run([
            event('e2', 'purchase', { email: 'buyer@example.com', revenue: 19.99, currency: 'EUR' }),
        ])
        expect(emulator.events()).toEqual([
            {
                event_name: 'purchased',
                created_at: CREATED_AT,
                contact_id: 'user-1',
                metadata: { revenue: { amount: 1999, currency: 'eur' }, currency: 'EUR' },
                received: 1,
            },
        ])
    })
})

describe.each(modes)('%s runtime, matched by external ID', (mode) => {
    const byId = {
        ...config,
        contactIdentifier: 'external ID',
        externalId: 'property',
        externalIdProperty: 'account_id',
        metadataProperties: 'plan,price,article,revenue',
    }

    test('events without an email land on the user by user_id, and on the lead by its id', async () => {
        harness = await createHarness({ mode, config: byId, emulatorUrl: emulator.url, minuteMs: 0 })
        const summary = await harness.run([
            event('x1', 'signed_up', { account_id: 'acct-2', plan: 'pro' }),
            event('x2', 'signed_up', { account_id: 'visitor-9' }),
            event('x3', 'signed_up', { email: 'buyer@example.com' }),
        ])
        expect(summary.delivered).toBe(2)
        expect(summary.skipped).toEqual({ 'no external ID': 1 })
        expect(emulator.events().map((e) => [e.contact_id, e.metadata])).toEqual([
            ['user-2', { plan: 'pro' }],
            ['lead-2', {}],
        ])
    })

    test('shaped money, a rich link and a zero revenue are stored as Intercom types', async () => {
        harness = await createHarness({ mode, config: byId, emulatorUrl: emulator.url, minuteMs: 0 })
        await harness.run([
            event('m1', 'purchase', {
                account_id: 'acct-2',
                price: { amount: 34999, currency: 'EUR' },
                article: { url: 'https://example.org/ab1de.html', value: 'the dude abides' },
                revenue: 0,
                currency: 'EUR',
            }),
        ])
        expect(emulator.events().map((e) => e.metadata)).toEqual([
            {
                price: { amount: 34999, currency: 'eur' },
                article: { url: 'https://example.org/ab1de.html', value: 'the dude abides' },
                revenue: 0,
            },
        ])
    })
})

test('a key refused on the EU host: setup stops with a message naming the Region as a likely cause', async () => {
    harness = await createHarness({
        mode: 'plugin-server',
        config: { ...config, intercomApiKey: 'a-token-of-another-region', region: 'EU' },
        emulatorUrl: emulator.url,
        minuteMs: 0,
    })
    const summary = await harness.run([event('r1', 'signed_up', { email: 'buyer@example.com' })])
    expect(summary.setupFailures[0]).toMatch(
        /Intercom rejected the API key \(401\) on https:\/\/api\.eu\.intercom\.io\. Likely cause: the Region/
    )
    expect(emulator.events()).toEqual([])
})

test('plugin-server: an event answered 429 is queued and delivered once after the window resets', async () => {
    harness = await createHarness({
        mode: 'plugin-server',
        config,
        emulatorUrl: emulator.url,
        minuteMs: 0,
        retries: false,
    })
    // Window 1: the contact lookup is cached by a first event.
    clockMs = Math.floor(Date.now() / 1000) * 1000
    await harness.run([event('warm', 'signed_up', { email: 'buyer@example.com' })])
    // Window 2: someone else spends the whole window, so the plugin's next call gets a 429.
    clockMs += 1000
    emulator.configure({ rateLimit: 1, windowSeconds: 1 })
    await fetch(`${emulator.url}/me`, {
        headers: { Authorization: `Bearer ${TOKEN}`, Accept: 'application/json' },
    })
    const later = {
        ...event('e3', 'signed_up', { email: 'buyer@example.com' }),
        timestamp: new Date((CREATED_AT + 1) * 1000).toISOString(),
    }
    const summary = await harness.run([later])
    expect(summary.queuedByReason).toEqual({ rate_limited: 1 })
    expect(emulator.stats().rateLimited).toBe(1)
    // Window 3: the queue waits for X-RateLimit-Reset, then delivers.
    clockMs += 1000
    const drained = await harness.drain({ maxRounds: 40, intervalMs: 250 })
    expect(drained.empty).toBe(true)
    expect(emulator.events().map((e) => [e.event_name, e.created_at, e.contact_id, e.received])).toEqual([
        ['signed_up', CREATED_AT, 'user-1', 1],
        ['signed_up', CREATED_AT + 1, 'user-1', 1],
    ])
})

test('cdp: an event held back by the rate limit fails with a RetryError naming why, never silently', async () => {
    emulator.configure({ rateLimit: 2, windowSeconds: 10 })
    harness = await createHarness({ mode: 'cdp', config, emulatorUrl: emulator.url, minuteMs: 0 })
    const summary = await harness.run([event('e4', 'signed_up', { email: 'buyer@example.com' })])
    expect(summary.delivered).toBe(0)
    expect(Object.keys(summary.failed).join()).toMatch(/RetryError: Intercom: .*429|backing off/)
    expect(emulator.events()).toEqual([])
})

describe('contact and company sync, end to end (plugin-server runtime, shared cache)', () => {
    const syncConfig = {
        ...config,
        triggeringEvents: 'signed_up',
        contactSync: 'on',
        personProperties: 'plan',
        createAttributes: 'Yes',
        createContacts: 'as lead',
        companyGroupType: 'company',
        companyProperties: 'tier',
    }
    const identify = (uuid: string): HarnessEvent => ({
        ...event(uuid, '$identify', {
            $set: { email: 'new@example.com', name: 'Ada Lovelace', plan: 'pro' },
        }),
    })

    test('$identify creates one contact; a repeat makes no call; $groupidentify + the next event attach the company', async () => {
        harness = await createHarness({
            mode: 'plugin-server',
            config: syncConfig,
            emulatorUrl: emulator.url,
            minuteMs: 0,
        })
        await harness.run([identify('i1')])
        const created = emulator.contacts().filter((c) => c.email === 'new@example.com')
        expect(created).toHaveLength(1)
        // The role chosen for unknown people applies to contacts the sync creates too.
        expect(created[0]).toMatchObject({
            role: 'lead',
            name: 'Ada Lovelace',
            custom_attributes: { plan: 'pro' },
        })

        const callsBefore = emulator.stats().calls
        await harness.run([identify('i2')])
        expect(emulator.stats().calls).toBe(callsBefore)

        const group = event('g1', '$groupidentify', {
            $group_type: 'company',
            $group_key: 'acme',
            $group_set: { name: 'Acme', tier: 'gold' },
        })
        const next = event('s1', 'signed_up', { email: 'new@example.com', $groups: { company: 'acme' } })
        await harness.run([group])
        await harness.run([next])
        expect(emulator.companies()).toEqual([
            expect.objectContaining({
                company_id: 'acme',
                name: 'Acme',
                custom_attributes: { tier: 'gold' },
            }),
        ])
        const contact = emulator.contacts().find((c) => c.email === 'new@example.com')!
        expect(contact.companies.data.map((c) => c.id)).toEqual([emulator.companies()[0].id])
        expect(emulator.events()).toEqual([
            expect.objectContaining({ event_name: 'signed_up', contact_id: contact.id, received: 1 }),
        ])
    })

    test('every person property, nested ones flattened, and last_seen_at from the event time', async () => {
        harness = await createHarness({
            mode: 'plugin-server',
            config: { ...syncConfig, personProperties: '*' },
            emulatorUrl: emulator.url,
            minuteMs: 0,
        })
        const now = Math.floor(Date.now() / 1000) - 5
        await harness.run([
            {
                ...event('i9', '$identify', {
                    $set: {
                        email: 'buyer@example.com',
                        plan: 'pro',
                        address: { city: 'Paris' },
                        $browser: 'x',
                    },
                }),
                timestamp: new Date(now * 1000).toISOString(),
            },
        ])
        const buyer = emulator.contacts().find((c) => c.id === 'user-1')!
        expect(buyer.last_seen_at).toBe(now)
        expect(buyer.custom_attributes).toEqual({ plan: 'pro', address_city: 'Paris' })
    })

    test('an event of a brand-new email, with creation on, reaches Intercom on the first try', async () => {
        emulator.configure({ searchLagMs: 60_000 }) // new contacts are not searchable for a minute
        harness = await createHarness({
            mode: 'cdp',
            config: syncConfig,
            emulatorUrl: emulator.url,
            minuteMs: 0,
        })
        const summary = await harness.run([event('n1', 'signed_up', { email: 'brand-new@example.com' })])
        expect(summary.delivered).toBe(1)
        expect(summary.retried).toBe(0)
        const lead = emulator.contacts().find((c) => c.email === 'brand-new@example.com')!
        expect(lead.role).toBe('lead')
        expect(emulator.events()).toEqual([expect.objectContaining({ contact_id: lead.id, received: 1 })])
    })
})
