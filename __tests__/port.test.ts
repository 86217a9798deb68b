/** The port package for PostHog's current executor: template.ts generated from plugin.json, the original app's inputs kept. */
import { mkdtempSync, readFileSync, rmSync } from 'fs'
import { tmpdir } from 'os'
import { join } from 'path'
import { parseConfig, PluginConfig } from '../index'
import {
    buildPort,
    COMMITTED_TEMPLATE,
    inputsSchema,
    Manifest,
    ORIGINAL_KEYS,
    readManifest,
    renderTemplate,
    template,
    TEMPLATE_ID,
} from '../port/build'

const manifest: Manifest = readManifest()
const inputs = inputsSchema(manifest)

test('the committed port/template.ts is what plugin.json generates (`npm run port -- --refresh` after editing plugin.json)', () => {
    expect(readFileSync(COMMITTED_TEMPLATE, 'utf8')).toBe(renderTemplate(manifest))
})

test("it keeps the id of PostHog's port of the original app, as a destination", () => {
    expect(template(manifest)).toMatchObject({
        id: TEMPLATE_ID,
        type: 'destination',
        code_language: 'javascript',
    })
    expect(TEMPLATE_ID).toBe('plugin-posthog-intercom-plugin')
})

test('every field of plugin.json is an input, in order, not templated', () => {
    expect(inputs.map((input) => input.key)).toEqual(manifest.config.map((field) => field.key))
    for (const input of inputs) {
        const field = manifest.config.find((candidate) => candidate.key === input.key)!
        expect(input).toMatchObject({
            label: field.name,
            type: field.type,
            description: field.hint,
            templating: false,
        })
        expect(input.required).toBe(field.required === true)
        expect(input.secret).toBe(field.secret === true)
        expect(input.default).toBe(field.default)
        expect(input.choices).toEqual(field.choices?.map((choice) => ({ value: choice, label: choice })))
    }
})

test("the 4 inputs of the original app keep their key, type and meaning (values saved by PostHog's port)", () => {
    const byKey = Object.fromEntries(inputs.map((input) => [input.key, input]))
    expect(ORIGINAL_KEYS.filter((key) => !(key in byKey))).toEqual([])
    expect(ORIGINAL_KEYS).toEqual([
        'intercomApiKey',
        'triggeringEvents',
        'ignoredEmailDomains',
        'useEuropeanDataStorage',
    ])
    expect(byKey.intercomApiKey).toMatchObject({ type: 'string', required: true, secret: true })
    expect(byKey.triggeringEvents).toMatchObject({ type: 'string', default: '$identify' })
    expect(byKey.ignoredEmailDomains).toMatchObject({ type: 'string', default: '' })
    expect(byKey.useEuropeanDataStorage).toMatchObject({ type: 'choice', default: 'No' })
    expect(byKey.useEuropeanDataStorage.choices).toEqual(
        expect.arrayContaining([
            { value: 'Yes', label: 'Yes' },
            { value: 'No', label: 'No' },
        ])
    )
    // What PostHog's port saved for an EU install still means EU.
    const saved: PluginConfig = {
        intercomApiKey: 'tok',
        triggeringEvents: '$identify,mycustomevent',
        ignoredEmailDomains: 'dev.posthog.com',
        useEuropeanDataStorage: 'Yes',
    }
    expect(parseConfig(saved)).toMatchObject({ region: 'EU', ignoredDomains: ['dev.posthog.com'] })
})

test("the inputs' defaults are a valid config", () => {
    const defaults = Object.fromEntries(inputs.map((input) => [input.key, input.default ?? '']))
    expect(() => parseConfig({ ...defaults, intercomApiKey: 'tok' })).not.toThrow()
})

test('npm run port writes index.ts byte for byte and the same template.ts', async () => {
    const out = mkdtempSync(join(tmpdir(), 'intercom-port-'))
    try {
        await buildPort(out)
        expect(readFileSync(join(out, 'index.ts'))).toEqual(readFileSync(join(__dirname, '..', 'index.ts')))
        expect(readFileSync(join(out, 'template.ts'), 'utf8')).toBe(renderTemplate(manifest))
    } finally {
        rmSync(out, { recursive: true, force: true })
    }
})
