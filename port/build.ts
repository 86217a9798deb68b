/** Builds the port of this plugin for PostHog's current executor (its `_destinations/<name>/` format):
 * `npm run port -- --out <dir>` writes `<dir>/index.ts` (this repository's, byte for byte) and
 * `<dir>/template.ts`, whose `inputs_schema` is generated from plugin.json so that the two cannot drift.
 */
import { execFileSync } from 'child_process'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'fs'
import { join, resolve } from 'path'

/** PostHog's id of its existing port of the original Intercom app: kept, so installs carry over. */
export const TEMPLATE_ID = 'plugin-posthog-intercom-plugin'
/** What the original app's form had: every existing install has values under these keys. */
export const ORIGINAL_KEYS = [
    'intercomApiKey',
    'triggeringEvents',
    'ignoredEmailDomains',
    'useEuropeanDataStorage',
]

const ROOT = resolve(__dirname, '..')

export interface ManifestField {
    key?: string
    name?: string
    type?: string
    hint?: string
    markdown?: string
    default?: string
    required?: boolean
    secret?: boolean
    choices?: string[]
}
export interface Manifest {
    name: string
    description?: string
    config: ManifestField[]
}

/** One input of a PostHog destination template, as its `inputs_schema` lists them. */
export interface TemplateInput {
    key: string
    label: string
    type: string
    description: string
    default?: string
    required: boolean
    secret: boolean
    templating: false
    choices?: { value: string; label: string }[]
}

/** plugin.json's form → the template's inputs: every field, in order; only choice fields get choices. */
export function inputsSchema(manifest: Manifest): TemplateInput[] {
    return manifest.config
        .filter((field): field is ManifestField & { key: string } => Boolean(field.key && field.type))
        .map((field) => ({
            key: field.key,
            label: field.name ?? field.key,
            type: field.type!,
            description: [field.markdown, field.hint].filter(Boolean).join('\n\n'),
            ...(field.default === undefined ? {} : { default: field.default }),
            // `required_if` has no counterpart in templates: such fields are optional there, as the code allows.
            required: field.required === true,
            secret: field.secret === true,
            templating: false,
            ...(field.type === 'choice'
                ? { choices: (field.choices ?? []).map((choice) => ({ value: choice, label: choice })) }
                : {}),
        }))
}

/** The template object, with the fields PostHog's existing port of the original app has. */
export function template(manifest: Manifest): Record<string, unknown> {
    return {
        free: false,
        // As PostHog's port of the original app: existing installs run, new users are not offered it.
        status: 'deprecated',
        type: 'destination',
        id: TEMPLATE_ID,
        name: manifest.name,
        description: manifest.description ?? '',
        icon_url: 'https://raw.githubusercontent.com/PostHog/posthog-intercom-plugin/main/logo.png',
        category: [],
        code_language: 'javascript',
        code: 'return event',
        inputs_schema: inputsSchema(manifest),
    }
}

/**
 * Formatted by this repository's prettier and config, in a child process: prettier 3 loads its parsers
 * with dynamic imports, which jest's module system refuses.
 */
function formatted(source: string): string {
    const cli = require.resolve('prettier/bin/prettier.cjs')
    return execFileSync(process.execPath, [cli, '--stdin-filepath', join(ROOT, 'port', 'template.ts')], {
        cwd: ROOT,
        input: source,
        encoding: 'utf8',
    })
}

/** The committed copy, checked by __tests__/port.test.ts: `npm run port -- --refresh` rewrites it. */
export const COMMITTED_TEMPLATE = join(ROOT, 'port', 'template.ts')

const TEMPLATE_AT = '    template: '

/**
 * The source of template.ts: its hand-written wrapper, kept once in the committed file, followed by the
 * template object generated from plugin.json.
 */
export function renderTemplate(
    manifest: Manifest,
    committed = readFileSync(COMMITTED_TEMPLATE, 'utf8')
): string {
    const at = committed.indexOf(TEMPLATE_AT)
    if (at < 0) throw new Error(`${COMMITTED_TEMPLATE} has lost its \`template:\` line`)
    const object = JSON.stringify(template(manifest), null, 4)
    return formatted(
        `${committed.slice(0, at)}${TEMPLATE_AT}${object} as LegacyDestinationPlugin['template'],\n}\n`
    )
}

export function readManifest(): Manifest {
    return JSON.parse(readFileSync(join(ROOT, 'plugin.json'), 'utf8')) as Manifest
}

/** Writes `<out>/index.ts` and `<out>/template.ts`; returns their paths. */
export async function buildPort(out: string): Promise<string[]> {
    mkdirSync(out, { recursive: true })
    const index = join(out, 'index.ts')
    const templateFile = join(out, 'template.ts')
    copyFileSync(join(ROOT, 'index.ts'), index)
    writeFileSync(templateFile, renderTemplate(readManifest()))
    return [index, templateFile]
}

function outArgument(argv: string[]): string | null {
    const at = argv.indexOf('--out')
    return at >= 0 && argv[at + 1] ? argv[at + 1] : null
}

async function main(argv: string[]): Promise<string[]> {
    if (argv.includes('--refresh')) {
        writeFileSync(COMMITTED_TEMPLATE, renderTemplate(readManifest()))
        return [COMMITTED_TEMPLATE]
    }
    const out = outArgument(argv)
    if (!out) {
        throw new Error(
            'Usage: npm run port -- --out <dir>   (e.g. <posthog>/nodejs/src/cdp/legacy-plugins/_destinations/intercom)\n' +
                '       npm run port -- --refresh     (rewrite port/template.ts after editing plugin.json)'
        )
    }
    return buildPort(resolve(out))
}

if (require.main === module) {
    main(process.argv.slice(2)).then(
        (written) => console.log(`Wrote ${written.join(' and ')}.`),
        (error: unknown) => {
            console.error(error instanceof Error ? error.message : error)
            process.exit(1)
        }
    )
}
