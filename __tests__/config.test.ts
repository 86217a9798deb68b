/** Config parsing and setupPlugin's API-key check: what the user sees in PostHog's Apps page. */
import nock from 'nock'
import { ConfigError, parseConfig, PluginConfig, setupPlugin } from '../index'
import { allLogs, AU, EU, makeMeta, TOKEN, US, useNock } from './helpers'

useNock()

const base: PluginConfig = { intercomApiKey: TOKEN, triggeringEvents: 'signed_up' }

describe('parseConfig rejects what cannot work, with a message that says what to do', () => {
    test.each<[string, PluginConfig, RegExp]>([
        ['missing token', { ...base, intercomApiKey: undefined }, /API key is missing.*Developer Hub/],
        ['blank token', { ...base, intercomApiKey: '   ' }, /API key is missing/],
        ['token with Bearer prefix', { ...base, intercomApiKey: 'Bearer abc' }, /without "Bearer"/],
        ['no triggering events', { ...base, triggeringEvents: '' }, /Triggering events is empty/],
        ['only commas', { ...base, triggeringEvents: ' , ,, ' }, /Triggering events is empty/],
        ['unknown region', { ...base, region: 'ASIA' }, /Region must be US, EU or AU, not "ASIA"/],
        [
            'mapping without target',
            { ...base, eventNameMapping: '$identify:' },
            /"\$identify:" is not of the form/,
        ],
        [
            'mapping without source',
            { ...base, eventNameMapping: ':identified' },
            /is not of the form from:to/,
        ],
        [
            'mapping without colon',
            { ...base, eventNameMapping: 'signed_up' },
            /Event name mapping: "signed_up"/,
        ],
        ['metadata rename without key', { ...base, metadataProperties: 'plan:' }, /Event properties to send/],
    ])('%s', (_name, config, message) => {
        expect(() => parseConfig(config)).toThrow(ConfigError)
        expect(() => parseConfig(config)).toThrow(message)
    })
})

describe('parseConfig reads lists leniently', () => {
    test('trims items and drops empty ones', () => {
        const settings = parseConfig({
            ...base,
            triggeringEvents: ' $identify , ,signed_up,',
            ignoredEmailDomains: ' Example.COM, @posthog.com ,',
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
        })
        expect(Object.fromEntries(settings.eventNames)).toEqual({
            $identify: 'identified',
            signed_up: 'Signed up',
        })
        expect(settings.emailProperty).toBe('email')
    })

    test('`*` sends all properties', () => {
        expect(parseConfig({ ...base, metadataProperties: ' * ' }).metadata).toEqual({
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
        expect(() => parseConfig({ ...base, externalIdProperty: 'account_id', [key]: choice })).not.toThrow()
    })
})
