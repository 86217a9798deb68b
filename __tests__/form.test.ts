/** The plugin's form as PostHog's 2024–25 UI renders it from plugin.json.
 *
 * Which fields show, which are
 * required, and that what the form requires is what the code needs. The model follows PostHog's
 * `PipelinePluginConfiguration.tsx` and `configUtils.ts` (PostHog/posthog, frontend/src/scenes/pipeline).
 */
import { ConfigError, parseConfig, PluginConfig } from '../index'
import { TOKEN } from './helpers'

type Condition = [string, string?]
interface Entry {
    key?: string
    type?: string
    name?: string
    markdown?: string
    hint?: string
    default?: string
    choices?: unknown[]
    secret?: boolean
    required?: boolean
    visible_if?: Condition[]
    required_if?: Condition[]
}
type Values = Record<string, string | undefined>

// eslint-disable-next-line @typescript-eslint/no-require-imports
const manifest = require('../plugin.json') as { description: string; config: Entry[] }

/** A condition holds when the field has that value, or (no value given) any non-empty value. */
function holds(values: Values, [key, expected]: Condition): boolean {
    const actual = values[key] || ''
    return expected === undefined ? actual !== '' : expected === actual
}

/** A choice field renders only with a non-empty list of string choices and without `secret`. */
function validField(entry: Entry): boolean {
    return (
        entry.type !== 'choice' ||
        (Array.isArray(entry.choices) &&
            entry.choices.length > 0 &&
            entry.choices.every((choice) => typeof choice === 'string') &&
            !entry.secret)
    )
}

/** What the page shows: entries with a key and a type, valid, and not hidden by `visible_if`. */
function renderForm(values: Values): { shown: string[]; required: string[] } {
    const hidden = (entry: Entry) => !!entry.visible_if && !entry.visible_if.every((c) => holds(values, c))
    const shown = manifest.config
        .filter((entry) => entry.key && entry.type && validField(entry) && !hidden(entry))
        .map((entry) => entry.key!)
    const required = manifest.config
        .filter(
            (entry) =>
                entry.key &&
                (entry.required || (!!entry.required_if && entry.required_if.every((c) => holds(values, c))))
        )
        .map((entry) => entry.key!)
    return { shown, required }
}

/** A new install: the form starts from every field's default. */
const defaults: Values = Object.fromEntries(
    manifest.config.filter((entry) => entry.key).map((entry) => [entry.key!, entry.default])
)

const ALWAYS = [
    'intercomApiKey',
    'region',
    'triggeringEvents',
    'contactIdentifier',
    'emailProperty',
    'externalId',
    'ignoredEmailDomains',
    'metadataProperties',
    'eventNameMapping',
    'useEuropeanDataStorage',
    'contactSync',
    'createContacts',
    'createAttributes',
    'companyGroupType',
]

describe('every entry renders in the 2024–25 UI', () => {
    test('no markdown-only entry (that UI drops entries without a key and a type); their text is in the description and hints', () => {
        expect(manifest.config.filter((entry) => !entry.key || !entry.type)).toEqual([])
        expect(manifest.config.filter((entry) => !validField(entry))).toEqual([])
        expect(manifest.description).toMatch(/data events.*matching Intercom contact/)
        expect(manifest.config.find((entry) => entry.key === 'contactSync')?.hint).toMatch(
            /Contact and company sync.*Unchanged values cost no API call/
        )
    })

    test('conditions name fields that exist', () => {
        const keys = new Set(manifest.config.map((entry) => entry.key))
        for (const entry of manifest.config) {
            for (const [key] of [...(entry.visible_if ?? []), ...(entry.required_if ?? [])]) {
                expect(keys.has(key)).toBe(true)
            }
        }
    })
})

describe('visibility and required fields for the main configurations', () => {
    test.each<[string, Values, string[], string[]]>([
        ['a new install (defaults)', {}, ALWAYS, ['intercomApiKey', 'triggeringEvents']],
        [
            'contact sync on: its fields show, triggering events become optional',
            { contactSync: 'on' },
            [...ALWAYS, 'personProperties', 'updateLastSeen'],
            ['intercomApiKey'],
        ],
        [
            'a company group type: company properties show',
            { companyGroupType: 'company' },
            [...ALWAYS, 'companyProperties'],
            ['intercomApiKey'],
        ],
        [
            'external ID from a property: that property shows and is required',
            { externalId: 'property' },
            [...ALWAYS, 'externalIdProperty'],
            ['intercomApiKey', 'triggeringEvents', 'externalIdProperty'],
        ],
        [
            'event properties listed: the money fields show',
            { metadataProperties: 'plan,revenue' },
            [...ALWAYS, 'revenueProperties', 'currencyProperty', 'defaultCurrency'],
            ['intercomApiKey', 'triggeringEvents'],
        ],
    ])('%s', (_name, changes, shown, required) => {
        const form = renderForm({ ...defaults, ...changes })
        expect(form.shown.sort()).toEqual([...shown].sort())
        expect(form.required.sort()).toEqual([...required].sort())
    })
})

describe('required agrees with what the code accepts', () => {
    const filled = (values: Values): PluginConfig => ({ ...values, intercomApiKey: TOKEN }) as PluginConfig

    test.each<[string, Values]>([
        ['defaults', {}],
        ['sync on', { contactSync: 'on' }],
        ['company', { companyGroupType: 'company' }],
        ['external ID property', { externalId: 'property', externalIdProperty: 'account_id' }],
    ])('%s: the form as filled is accepted, and emptying any required field is refused', (_name, changes) => {
        const values = filled({ ...defaults, ...changes } as Values) as Values
        expect(() => parseConfig(values as PluginConfig)).not.toThrow()
        const { required, shown } = renderForm(values)
        for (const key of required) {
            expect(() => parseConfig({ ...values, [key]: '' } as PluginConfig)).toThrow(ConfigError)
        }
        // And a shown optional field may be emptied.
        for (const key of shown.filter((k) => !required.includes(k))) {
            expect(() => parseConfig({ ...values, [key]: '' } as PluginConfig)).not.toThrow()
        }
    })
})

describe("an upgrade from PostHog's original Intercom app", () => {
    const ORIGINAL = ['intercomApiKey', 'triggeringEvents', 'ignoredEmailDomains', 'useEuropeanDataStorage']

    test.each([
        ['Yes', 'EU'],
        ['True', 'EU'],
        ['No', 'US'],
        ['False', 'US'],
    ])('European data storage saved as %s: displayed as saved, and means %s', (saved, region) => {
        const config: Values = {
            intercomApiKey: TOKEN,
            triggeringEvents: '$identify,signed_up',
            ignoredEmailDomains: 'posthog.com',
            useEuropeanDataStorage: saved,
        }
        const field = manifest.config.find((entry) => entry.key === 'useEuropeanDataStorage')!
        // PostHog's choice field is a select of `choices`: a saved value outside them would show blank.
        expect(field.choices).toContain(saved)
        expect(renderForm(config).shown).toEqual(expect.arrayContaining(ORIGINAL))
        expect(parseConfig(config as PluginConfig)).toMatchObject({ region, identifier: 'email' })
    })
})
