/** `replay()`: PostHog event exports replayed into Intercom through the plugin itself, loaded as PostHog loads it. */
// Targets: the real Intercom, a local emulator, or a dry run answered inside the process. Each file has its
// own checkpoint, keyed by target and config; the token and emails are never printed.
import { AsyncLocalStorage } from 'node:async_hooks'

import { parseConfig, parseRegion, REGION_HOSTS } from '../../index'
import { Emulator, Region as EmulatorRegion, SeedContact, startEmulator } from '../intercom/emulator'
import { UsageError } from '../lib/flags'
import { createMemoryStorage, describeError } from '../runtime/harness'
import type { FetchFn, IntercomHost, PluginExports } from '../runtime/load-plugin'
import { consoleTo, hostNodeFetch, loadPlugin, redirectingFetch, regionNameOf } from '../runtime/load-plugin'
import { configDigest, workspaceKey } from './checkpoint'
import { dryRunFetch, intercomOnlyFetch, redact, WindowGate } from './fetch'
import { displayPath, expandInputs, InputFormat } from './input'
import { Pacer } from './pace'
import { FileSummary, ReplaySummary } from './report'
import { replayFile, RunPlugin, Shared } from './run'

export { exitCode, formatSummary } from './report'
export type { ReplaySummary } from './report'

export const DEFAULTS = {
    /** Events in flight: enough to spend a 10 s window of Intercom's in well under a second. */
    concurrency: 16,
    checkpointDir: '.replay-checkpoints',
    checkpointEvery: 500,
    /** Events in a row not delivered before a file is given up for this run (Intercom down, key revoked). */
    stopAfterFailures: 25,
} as const

export type ReplayTarget =
    /** The real Intercom of the configured region; the token is in `config.intercomApiKey`. */
    | { kind: 'intercom' }
    /**
     * An emulator: `emulator` (checkpoints kept), `url` (one already running, seeded there, its token in the
     * config) or one started for this run. Contacts: `seedContacts`, plus one per email of the files when
     * `deriveContacts` (default: when no seedContacts are given).
     */
    | {
          kind: 'emulator'
          emulator?: Emulator
          url?: string
          seedContacts?: SeedContact[]
          deriveContacts?: boolean
      }
    /** Intercom answered in the process: nothing leaves it; writes are printed instead. */
    | { kind: 'dry-run' }

export interface ReplayOptions {
    /** Files, folders (every file under them) or globs (`exports/*.parquet`). */
    inputs: string[]
    /** Default: told by each file's content. */
    format?: InputFormat
    /** The plugin config as PostHog stores it: plugin.json keys, string values. */
    config: Record<string, string>
    target: ReplayTarget
    /** Events per second handed to the plugin; default: as fast as Intercom's rate-limit windows allow. */
    rate?: number
    concurrency?: number
    /** Folder of the checkpoints and failed-events files; false for none. A dry run writes none. */
    checkpointDir?: string | false
    checkpointEvery?: number
    /** Ignore existing checkpoints of this target and config: replay every file from its first line. */
    restart?: boolean
    /** Stop after this many rows over all files (a trial run; the next run goes on from there). */
    limit?: number
    stopAfterFailures?: number
    /** Abort: stop reading, let events in flight finish, write the checkpoint. */
    signal?: AbortSignal
    progress?: boolean
    /** The HTTP client under the host guard or the emulator redirect; default node-fetch 2, PostHog's own. */
    fetch?: FetchFn
    /** Factor on PostHog's 5/10/20/40 s waits between onEvent attempts after a RetryError (tests use a tiny one). */
    retryDelayScale?: number
    /** Dry-run writes; default stdout. */
    print?: (line: string) => void
    /** Notices (resuming, formats, warnings); default stderr. */
    notice?: (line: string) => void
    /** The plugin's log lines, redacted; default dropped. */
    onLog?: (level: string, text: string) => void
}

/** The plugin's setupPlugin refused the config or the token: nothing was sent. */
export class SetupError extends Error {}

function positive(name: string, value: number, integer = true): number {
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
        throw new UsageError(`${name} must be a positive ${integer ? 'whole ' : ''}number, not ${value}.`)
    }
    return value
}

/** A bare access token only (one inside a URL or a header would be half-used); the message never repeats it. */
export function checkToken(token: string | undefined): void {
    if (!token || token.trim() === '') {
        throw new UsageError('No Intercom token: set INTERCOM_API_KEY (or use --dry-run or --emulator).')
    }
    if (/:\/\/|^www\.|[?&][\w-]+=|@/i.test(token) || /^bearer\b|\s/i.test(token.trim())) {
        throw new UsageError(
            'The Intercom token must be the bare access token, not a URL, a header or anything around it.'
        )
    }
}

/** The config the plugin gets: the token checked for the real Intercom, swapped for the emulator's or a dummy elsewhere. */
function pluginConfig(options: ReplayOptions): Record<string, string> {
    const config = { ...options.config }
    if (!config.triggeringEvents?.trim()) {
        throw new UsageError(
            '--events is missing: name the events to send, e.g. --events signed_up,purchase.'
        )
    }
    const target = options.target
    if (target.kind === 'dry-run') config.intercomApiKey = 'dry-run-token'
    if (target.kind === 'emulator') {
        // A running emulator (`url`) expects the token it was started with: the config's, when given.
        const own = target.emulator?.options.tokens[0] ?? (target.url ? config.intercomApiKey : undefined)
        config.intercomApiKey = own || 'test-token'
    }
    if (target.kind === 'intercom') checkToken(config.intercomApiKey)
    if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 0)) {
        throw new UsageError(`limit must be a whole number, not ${options.limit}.`)
    }
    return config
}

// --- Targets: what the plugin's node-fetch reaches

type Target = Shared['target'] & { fetch: FetchFn; emulator?: Emulator; close?(): Promise<void> }

async function emulatorTarget(
    target: Extract<ReplayTarget, { kind: 'emulator' }>,
    host: IntercomHost,
    base: FetchFn
): Promise<Target> {
    // A running emulator outlives the run, so checkpoints are kept for it.
    const key = (url: string): string => `emulator ${url}`
    if (target.url)
        return { kind: 'emulator', fetch: redirectingFetch(target.url, base), key: key(target.url) }
    const owned = !target.emulator
    const emulator =
        target.emulator ??
        (await startEmulator({ region: regionNameOf(host) as EmulatorRegion, contacts: target.seedContacts }))
    if (!owned) for (const contact of target.seedContacts ?? []) emulator.addContact(contact)
    const known = new Set(emulator.contacts().map((contact) => contact.email))
    const seed = (email: string): void => {
        if (!known.has(email)) emulator.addContact({ email, role: 'user' })
        known.add(email)
    }
    return {
        kind: 'emulator',
        fetch: redirectingFetch(emulator.url, base),
        // An emulator started for this run forgets everything when it stops: no checkpoint could apply to it.
        key: owned ? null : key(emulator.url),
        emulator,
        seed: (target.deriveContacts ?? !target.seedContacts) ? seed : undefined,
        close: async () => (owned ? emulator.close() : undefined),
    }
}

function openTarget(
    options: ReplayOptions,
    config: Record<string, string>,
    onWrite: (write: string) => void
) {
    const base = options.fetch ?? hostNodeFetch
    const region = parseRegion(config.region, config.useEuropeanDataStorage)
    const host = new URL(REGION_HOSTS[region]).hostname as IntercomHost
    if (options.target.kind === 'emulator') return emulatorTarget(options.target, host, base)
    if (options.target.kind === 'dry-run')
        return { kind: 'dry-run', fetch: dryRunFetch(onWrite), key: null } as const
    const key = workspaceKey(region, config.intercomApiKey)
    return { kind: 'intercom', fetch: intercomOnlyFetch(host, base), key } as const
}

// --- The plugin, loaded as PostHog loads it

type LoadedPlugin = RunPlugin & Pick<PluginExports, 'teardownPlugin'>
type Log = NonNullable<ReplayOptions['onLog']>

/** PostHog's current executor's meta: no cache, so no retry queue, and each event's fate is known when onEvent settles. */
async function startPlugin(config: Record<string, string>, fetch: FetchFn, log: Log): Promise<LoadedPlugin> {
    const console = consoleTo((level, args) =>
        log(level, args.map((arg) => (typeof arg === 'string' ? arg : describeError(arg))).join(' '))
    )
    const exports = loadPlugin({ fetch, console })
    const onEvent = exports.onEvent
    if (!onEvent) throw new SetupError('index.ts exports no onEvent: there is nothing to replay through.')
    const meta = {
        config,
        global: {},
        attachments: {},
        storage: createMemoryStorage(),
        geoip: { locate: async () => null },
        jobs: {},
        metrics: {},
    }
    try {
        await exports.setupPlugin?.(meta)
    } catch (error) {
        // Errors of the sandbox's realm are not `instanceof Error` here, but they have a message.
        const message = (error as { message?: unknown }).message
        throw new SetupError(
            `The plugin refused to start: ${typeof message === 'string' ? message : describeError(error)}`
        )
    }
    return { onEvent, teardownPlugin: exports.teardownPlugin, meta }
}

// --- replay()

/** Replays every file of `options.inputs` through the plugin, one after the other; resolves to the summary (see `exitCode`). */
export async function replay(options: ReplayOptions): Promise<ReplaySummary> {
    const started = Date.now()
    const config = pluginConfig(options)
    const setting = (name: 'concurrency' | 'stopAfterFailures' | 'checkpointEvery') =>
        positive(name, options[name] ?? DEFAULTS[name])
    const run: Shared['run'] = {
        settings: parseConfig(config), // the plugin's own message for a config it would refuse
        concurrency: setting('concurrency'),
        budget: { left: options.limit ?? Infinity },
        signal: options.signal,
        retryDelayScale: options.retryDelayScale ?? 1,
        stopAfterFailures: setting('stopAfterFailures'),
        checkpointEvery: setting('checkpointEvery'),
        checkpointDir: options.checkpointDir ?? DEFAULTS.checkpointDir,
    }
    const eventPacer =
        options.rate === undefined
            ? undefined
            : new Pacer(positive('rate', options.rate, false), options.signal)
    const files = expandInputs(options.inputs)
    const print = options.print ?? ((line) => process.stdout.write(`${line}\n`))
    const notice = options.notice ?? ((line) => process.stderr.write(`${line}\n`))
    const redactText = (text: string): string => redact(text, config.intercomApiKey)
    const rowContext = new AsyncLocalStorage<number>()
    const target: Target = await openTarget(options, config, (write) => {
        const line = rowContext.getStore()
        print(`${line === undefined ? 'setup' : `line ${line}`}: ${write}`)
    })
    try {
        const gate = new WindowGate(options.signal)
        const log: Log = (level, text) => options.onLog?.(level, redactText(text))
        const plugin = await startPlugin(config, gate.wrap(target.fetch), log)
        const shared: Shared = {
            options,
            run,
            plugin,
            target,
            gate,
            eventPacer,
            rowContext,
            redactText,
            notice: (file, line) => notice(`${displayPath(file)}: ${line}`),
            digest: configDigest(config),
        }
        const summaries: FileSummary[] = []
        for (const file of files) summaries.push(await replayFile(file, shared))
        await plugin.teardownPlugin?.(plugin.meta)
        const emulator = target.emulator
        return {
            target: target.kind,
            files: summaries,
            intercomCalls: gate.calls,
            emulator: emulator && {
                url: emulator.url,
                eventsStored: emulator.events().length,
                deduplicated: emulator.stats().eventsDeduplicated,
            },
            interrupted: Boolean(options.signal?.aborted),
            durationMs: Date.now() - started,
        }
    } finally {
        await target.close?.()
    }
}
