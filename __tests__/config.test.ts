/** Config parsing and setupPlugin's API-key check: what the user sees in PostHog's Apps page. */
import nock from 'nock'
import { ConfigError, LIST_FIELDS, parseConfig, PluginConfig, setupPlugin } from '../index'
import { BAD_CONFIGS, badConfig } from './fixtures/bad-configs'
import { allLogs, AU, EU, makeMeta, TOKEN, US, useNock } from './helpers'

useNock()

const base: PluginConfig = { intercomApiKey: TOKEN, triggeringEvents: 'signed_up' }

describe('parseConfig rejects what cannot work, with a message that says what to do', () => {
    test.each(BAD_CONFIGS.map((row) => [row.name, row] as const))('%s', (_name, row) => {
        const config = badConfig(row, TOKEN)
        expect(() => parseConfig(config)).toThrow(ConfigError)
        expect(() => parseConfig(config)).toThrow(row.error)
    })
})

describe('parseConfig reads lists leniently', () => {
    test('trims items and drops empty ones', () => {
        const settings = parseConfig({
            ...base,
            triggeringEvents: ' $identify , ,signed_up,',
            ignoredEmailDomains: ' Example.COM, .posthog.com ,',
            metadataProperties: ' plan , $current_url : url ',
            eventNameMapping: '$identify: identified , signed_up:Signed up',
        })
        expect([...settings.triggeringEvents]).toEqual(['$identify', 'signed_up'])
        expect(settings.ignoredDomains).toEqual(['example.com', 'posthog.com'])
        expect(settings.metadata).toEqual({
            all: false,
            fields: [
                { from: 'plan', to: 'plan' },
                { from: '$current_url', to: 'url' },
            ],
            money: { revenueKeys: ['revenue', 'price'], currencyKey: 'currency', defaultCurrency: null },
        })
        expect(Object.fromEntries(settings.eventNames)).toEqual({
            $identify: 'identified',
            signed_up: 'Signed up',
        })
        expect(settings.emailProperty).toBe('email')
    })

    test('`*` sends all properties', () => {
        expect(parseConfig({ ...base, metadataProperties: ' * ' }).metadata).toMatchObject({
            all: true,
            fields: [],
            exclude: 'email',
        })
    })
})

describe('region', () => {
    test.each<[string, PluginConfig, string]>([
        ['default', {}, US],
        ['US', { region: 'US' }, US],
        ['EU', { region: 'EU' }, EU],
        ['AU', { region: 'AU' }, AU],
        ['lower case', { region: 'eu' }, EU],
        ['original app: European storage Yes', { useEuropeanDataStorage: 'Yes' }, EU],
        [
            'original app: Yes while the form shows the default US',
            { region: 'US', useEuropeanDataStorage: 'Yes' },
            EU,
        ],
        ['original app: No', { useEuropeanDataStorage: 'No' }, US],
        ["original app's first version: True", { useEuropeanDataStorage: 'True' }, EU],
        ["original app's first version: False", { useEuropeanDataStorage: 'False' }, US],
        ['True while the form shows the default US', { region: 'US', useEuropeanDataStorage: 'True' }, EU],
        ['explicit AU wins over the legacy switch', { region: 'AU', useEuropeanDataStorage: 'Yes' }, AU],
    ])('%s', (_name, config, host) => {
        expect(parseConfig({ ...base, ...config }).baseUrl).toBe(host)
    })
})

describe('setupPlugin checks the API key once with GET /me', () => {
    test('sends the token with the required headers, and accepts a matching workspace', async () => {
        nock(EU, {
            reqheaders: {
                authorization: `Bearer ${TOKEN}`,
                accept: 'application/json',
                'intercom-version': '2.11',
            },
        })
            .get('/me')
            .reply(200, { type: 'admin', app: { region: 'Europe' } })
        const { meta } = makeMeta({ ...base, region: 'EU' })
        await expect(setupPlugin(meta)).resolves.toBeUndefined()
        expect(meta.global.settings.region).toBe('EU')
    })

    test('401: the plugin does not start, and says the key was rejected', async () => {
        nock(US)
            .get('/me')
            .reply(401, {
                type: 'error.list',
                errors: [{ code: 'unauthorized', message: 'Access Token Invalid' }],
            })
        await expect(setupPlugin(makeMeta(base).meta)).rejects.toThrow(
            /Intercom rejected the API key \(401\)/
        )
    })

    test.each([
        ['Europe', 'EU'],
        ['AU', 'AU'],
    ])('workspace in %s while set to US: names the right region', async (intercomRegion, region) => {
        nock(US)
            .get('/me')
            .reply(200, { type: 'admin', app: { region: intercomRegion } })
        await expect(setupPlugin(makeMeta(base).meta)).rejects.toThrow(`set "Region" to ${region}`)
    })

    test('network failure or 5xx: a warning only, the plugin still starts', async () => {
        nock(US).get('/me').twice().replyWithError({ code: 'ECONNRESET', message: 'socket hang up' })
        const { meta, logs } = makeMeta(base)
        await expect(setupPlugin(meta)).resolves.toBeUndefined()
        expect(logs).toEqual([expect.stringMatching(/^warn: Could not check the Intercom API key now/)])

        nock(US).get('/me').twice().reply(503, {})
        await expect(setupPlugin(makeMeta(base).meta)).resolves.toBeUndefined()
    })

    test('bad config fails before any call to Intercom', async () => {
        await expect(setupPlugin(makeMeta({ intercomApiKey: '' }).meta)).rejects.toThrow(ConfigError)
    })

    test('the token never reaches a log line', () => {
        expect(allLogs.join('\n')).not.toContain(TOKEN)
    })
})

describe('plugin.json and the parser agree', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const manifest = require('../plugin.json') as {
        main: string
        posthogVersion: string
        config: {
            key?: string
            type?: string
            choices?: string[]
            default?: string
            secret?: boolean
            required?: boolean
        }[]
    }
    const fields = manifest.config.filter((field) => field.key)

    test('the entry point, version floor and the keys of the original Intercom app', () => {
        expect(manifest.main).toBe('index.ts')
        expect(manifest.posthogVersion).toBe('>= 1.30.0')
        const keys = fields.map((field) => field.key)
        expect(keys).toEqual(
            expect.arrayContaining([
                'intercomApiKey',
                'triggeringEvents',
                'ignoredEmailDomains',
                'useEuropeanDataStorage',
            ])
        )
        expect(fields.find((field) => field.key === 'intercomApiKey')).toMatchObject({
            secret: true,
            required: true,
        })
    })

    test('the form defaults make a valid config', () => {
        const defaults = Object.fromEntries(fields.map((field) => [field.key, field.default ?? '']))
        expect(parseConfig({ ...defaults, intercomApiKey: TOKEN })).toMatchObject({
            region: 'US',
            emailProperty: 'email',
        })
    })

    test.each(
        fields
            .filter((field) => field.type === 'choice')
            .flatMap((field) => field.choices!.map((choice) => [field.key!, choice]))
    )('%s: "%s" is understood', (key, choice) => {
        const config = { ...base, externalId: 'property', externalIdProperty: 'account_id', [key]: choice }
        expect(() => parseConfig(config)).not.toThrow()
    })
})

describe('strict field parsing: a setup error quoting the example of the field itself', () => {
    // The rows are in BAD_CONFIGS (fixtures/bad-configs.ts), checked above.
    test('an email pasted into Ignored email domains is not echoed in the error', () => {
        expect(() => parseConfig({ ...base, ignoredEmailDomains: 'ada@example.com' })).toThrow(
            expect.objectContaining({ message: expect.not.stringContaining('ada@') })
        )
    })

    test('an event name that starts with "[" is not JSON', () => {
        const settings = parseConfig({ ...base, triggeringEvents: '[Intercom] event.created,signed_up' })
        expect([...settings.triggeringEvents]).toEqual(['[Intercom] event.created', 'signed_up'])
    })

    test("each list field's error quotes the example its own hint in plugin.json shows", () => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const manifest = require('../plugin.json') as {
            config: { key?: string; name?: string; hint?: string }[]
        }
        for (const [key, field] of Object.entries(LIST_FIELDS)) {
            const entry = manifest.config.find((candidate) => candidate.key === key)
            expect(entry?.name).toBe(field.label)
            expect(entry?.hint).toContain(`e.g. \`${field.example}\``)
        }
    })
})

describe('the new options, parsed', () => {
    test('identifier choices', () => {
        const byProperty = { ...base, externalId: 'property', externalIdProperty: 'account_id' }
        expect(parseConfig(base).identifier).toBe('email')
        expect(parseConfig({ ...byProperty, contactIdentifier: 'external ID' }).identifier).toBe(
            'external_id'
        )
        expect(parseConfig({ ...byProperty, contactIdentifier: 'External ID, else email' }).identifier).toBe(
            'external_id_else_email'
        )
    })

    test.each<[string, PluginConfig, object]>([
        ['sync off', {}, { contacts: 'off', createRole: 'user', lastSeen: true }],
        ['on, no creation: updates only', { contactSync: 'on' }, { contacts: 'update', createRole: 'user' }],
        [
            'on, unknown people created as leads: the sync creates leads too',
            { contactSync: 'on', createContacts: 'as lead' },
            { contacts: 'create', createRole: 'lead', createContacts: 'lead' },
        ],
        [
            "this plugin's earlier label: update",
            { contactSync: 'update existing contacts' },
            { contacts: 'update' },
        ],
        [
            "this plugin's earlier label: create (as user)",
            { contactSync: 'create or update contacts' },
            { contacts: 'create', createRole: 'user' },
        ],
        ['last seen off', { contactSync: 'on', updateLastSeen: 'No' }, { lastSeen: false }],
        ['every person property', { contactSync: 'on', personProperties: ' * ' }, { attributes: 'all' }],
    ])('%s', (_name, config, expected) => {
        expect(parseConfig({ ...base, ...config }).sync).toMatchObject(expected)
    })

    test('money: the revenue and currency properties and a default currency', () => {
        expect(
            parseConfig({
                ...base,
                revenueProperties: 'amount_paid, total',
                currencyProperty: 'cur',
                defaultCurrency: ' EUR ',
            }).metadata.money
        ).toEqual({ revenueKeys: ['amount_paid', 'total'], currencyKey: 'cur', defaultCurrency: 'eur' })
        // An emptied field means none; a missing one (an install from before the field) the defaults.
        expect(parseConfig({ ...base, revenueProperties: '' }).metadata.money.revenueKeys).toEqual([])
    })

    test('Triggering events may be empty when only syncing, as the form says', () => {
        expect(() => parseConfig({ ...base, triggeringEvents: '', contactSync: 'on' })).not.toThrow()
        expect(() =>
            parseConfig({ ...base, triggeringEvents: '', companyGroupType: 'company' })
        ).not.toThrow()
    })
})

describe('region errors: a key refused on the EU or AU host names the Region as a likely cause', () => {
    test.each([
        ['EU', EU],
        ['AU', AU],
    ])('setup on %s', async (region, host) => {
        nock(host)
            .get('/me')
            .reply(401, {
                type: 'error.list',
                errors: [{ code: 'unauthorized', message: 'Access Token Invalid' }],
            })
        const error = await setupPlugin(makeMeta({ ...base, region }).meta).catch((e: Error) => e)
        expect(error).toBeInstanceOf(ConfigError)
        expect((error as Error).message).toMatch(
            new RegExp(
                `^Intercom rejected the API key \\(401\\) on ${host.replace(/\./g, '\\.')}\\. Likely cause: the Region\\.`
            )
        )
        expect((error as Error).message).toContain('check "Region"')
    })

    test('the original app switch (True) leads to EU, and its refusal names the Region too', async () => {
        nock(EU).get('/me').reply(401, {})
        await expect(setupPlugin(makeMeta({ ...base, useEuropeanDataStorage: 'True' }).meta)).rejects.toThrow(
            /on https:\/\/api\.eu\.intercom\.io\. Likely cause: the Region/
        )
    })

    test('on the US host the key itself is the cause', async () => {
        nock(US).get('/me').reply(401, {})
        const error = await setupPlugin(makeMeta(base).meta).catch((e: Error) => e)
        expect((error as Error).message).not.toMatch(/Region/)
    })
})
