/**
 * Replays PostHog event exports into Intercom through the plugin itself: index.ts is loaded as PostHog loads it
 * (Babel, then a sandbox) and each row goes through its onEvent, so what reaches Intercom is what PostHog
 * would have sent. Targets: the real Intercom, a local emulator, or a dry run answered inside the process.
 * Each file has its own checkpoint of the events done, keyed by target and config; the token and emails are
 * never printed. The command line is in cli.ts.
 */
import { AsyncLocalStorage } from 'node:async_hooks'

import { parseConfig, parseRegion, REGION_HOSTS } from '../../index'
import { Emulator, Region as EmulatorRegion, SeedContact, startEmulator } from '../intercom/emulator'
import { createMemoryStorage, describeError } from '../runtime/harness'
import { UsageError } from '../lib/flags'
import {
    consoleTo,
    ConsoleLike,
    FetchFn,
    hostNodeFetch,
    IntercomHost,
    loadPlugin,
    PluginExports,
    PluginMeta,
    redirectingFetch,
} from '../runtime/load-plugin'
import {
    checkpointPaths,
    configDigest,
    FileState,
    fingerprint,
    otherCheckpoints,
    targetKey,
} from './checkpoint'
import { CallMeter, DryRunWrite, dryRunFetch, intercomOnlyFetch, redact, WindowGate } from './fetch'
import { displayPath, expandInputs } from './files'
import { detectInput, InputError, InputFormat, InputKind, InputSource, openInput } from './input'
import { Pacer } from './pace'
import { createProgress, FileSummary, ReplaySummary, ReplayTargetKind, Tally } from './report'
import { FileRun, RunPlugin, RunSettings } from './run'

export { exitCode, formatSummary, nextSteps } from './report'
export type { FileSummary, ReplaySummary } from './report'

// ---------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------

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
     * An Intercom emulator: `emulator` if given (left running, and checkpoints are kept for it), else one
     * started on loopback for this run only. Contacts: `seedContacts`, and, unless `deriveContacts` is false,
     * one user per email of the files (default: only when no seedContacts are given).
     */
    | {
          kind: 'emulator'
          emulator?: Emulator
          /** An emulator already running (`npx tsx tools/intercom/emulator-cli.ts`), seeded there; its token in the config. */
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

/** How GET /me names each region: Intercom (and so the emulator) says `Europe`, not `EU`. */
const EMULATOR_REGIONS: Record<string, EmulatorRegion> = { US: 'US', EU: 'Europe', AU: 'AU' }
const DRY_RUN_TOKEN = 'dry-run-token'

/** The plugin's setupPlugin refused the config or the token: nothing was sent. */
export class SetupError extends Error {}

function positive(name: string, value: number, integer: boolean): number {
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
        throw new UsageError(`${name} must be a positive ${integer ? 'whole ' : ''}number, not ${value}.`)
    }
    return value
}

interface Resolved {
    options: ReplayOptions
    config: Record<string, string>
    region: keyof typeof REGION_HOSTS
    run: RunSettings
}

/** Options checked, config parsed by the plugin's own parser, and the token swapped out away from Intercom. */
function resolveOptions(options: ReplayOptions): Resolved {
    const kind = options.target.kind
    const config = { ...options.config }
    if (kind === 'dry-run') config.intercomApiKey = DRY_RUN_TOKEN
    if (kind === 'emulator')
        config.intercomApiKey = options.target.emulator?.options.tokens[0] ?? 'test-token'
    if (kind === 'intercom') checkToken(config.intercomApiKey)
    if (!config.triggeringEvents?.trim()) {
        throw new UsageError(
            'No triggering events: name the events to send with --events, e.g. --events signed_up,purchase.'
        )
    }
    if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 0)) {
        throw new UsageError(`limit must be a whole number, not ${options.limit}.`)
    }
    return {
        options,
        config,
        region: parseRegion(config.region, config.useEuropeanDataStorage),
        run: {
            settings: parseConfig(config), // the plugin's own message for a config it would refuse
            concurrency: positive('concurrency', options.concurrency ?? DEFAULTS.concurrency, true),
            budget: { left: options.limit ?? Infinity },
            signal: options.signal,
            retryDelayScale: options.retryDelayScale ?? 1,
            stopAfterFailures: positive(
                'stopAfterFailures',
                options.stopAfterFailures ?? DEFAULTS.stopAfterFailures,
                true
            ),
            checkpointEvery: positive(
                'checkpointEvery',
                options.checkpointEvery ?? DEFAULTS.checkpointEvery,
                true
            ),
        },
    }
}

/**
 * A bare access token only: one pasted inside a URL or a header would be half-used and could end up in
 * logs or shell history in that form. The message never repeats the value.
 */
export function checkToken(token: string | undefined): void {
    if (!token || token.trim() === '') {
        throw new UsageError('No Intercom token: set INTERCOM_API_KEY (or use --dry-run or --emulator).')
    }
    if (
        /:\/\/|^www\.|[?&][\w-]+=|@/i.test(token) ||
        /^bearer\b/i.test(token.trim()) ||
        /\s/.test(token.trim())
    ) {
        throw new UsageError(
            'The Intercom token must be the bare access token, not a URL, a header or anything around it.'
        )
    }
}

// ---------------------------------------------------------------------------------------------------
// Targets: what the plugin's node-fetch reaches
// ---------------------------------------------------------------------------------------------------

interface Target {
    kind: ReplayTargetKind
    fetch: FetchFn
    /** The checkpoint key of the target; null when a checkpoint would be meaningless (dry run, a throw-away emulator). */
    key: string | null
    emulator?: Emulator
    /** Adds a contact for an email the file uses, when the emulator is seeded from the file. */
    seed?: (email: string) => void
    close(): Promise<void>
}

function regionHost(region: keyof typeof REGION_HOSTS): IntercomHost {
    return new URL(REGION_HOSTS[region]).hostname as IntercomHost
}

/** A running emulator's URL: its state outlives the run, so checkpoints are kept for it. */
function remoteEmulatorTarget(url: string, base: FetchFn): Target {
    return {
        kind: 'emulator',
        fetch: redirectingFetch(url, base),
        key: targetKey({ kind: 'emulator', url }),
        close: async () => undefined,
    }
}

async function emulatorTarget(
    target: Extract<ReplayTarget, { kind: 'emulator' }>,
    region: keyof typeof REGION_HOSTS,
    base: FetchFn
): Promise<Target> {
    const owned = !target.emulator
    const emulator =
        target.emulator ??
        (await startEmulator({ region: EMULATOR_REGIONS[region], contacts: target.seedContacts }))
    if (!owned) for (const contact of target.seedContacts ?? []) emulator.addContact(contact)
    const known = new Set(emulator.contacts().map((contact) => contact.email))
    const derive = target.deriveContacts ?? !target.seedContacts
    return {
        kind: 'emulator',
        fetch: redirectingFetch(emulator.url, base),
        // An emulator started for this run forgets everything when it stops: no checkpoint could apply to it.
        key: owned ? null : targetKey({ kind: 'emulator', url: emulator.url }),
        emulator,
        seed: derive
            ? (email) => {
                  if (known.has(email)) return
                  known.add(email)
                  emulator.addContact({ email, role: 'user' })
              }
            : undefined,
        close: async () => {
            if (owned) await emulator.close()
        },
    }
}

async function openTarget(resolved: Resolved, onWrite: (write: DryRunWrite) => void): Promise<Target> {
    const { options, region, config } = resolved
    const base = options.fetch ?? hostNodeFetch
    const done = async (): Promise<void> => undefined
    switch (options.target.kind) {
        case 'dry-run':
            return { kind: 'dry-run', fetch: dryRunFetch(onWrite), key: null, close: done }
        case 'emulator':
            return options.target.url
                ? remoteEmulatorTarget(options.target.url, base)
                : emulatorTarget(options.target, region, base)
        case 'intercom':
            return {
                kind: 'intercom',
                fetch: intercomOnlyFetch(regionHost(region), base),
                key: targetKey({ kind: 'intercom', region, token: config.intercomApiKey }),
                close: done,
            }
    }
}

// ---------------------------------------------------------------------------------------------------
// The plugin, loaded as PostHog loads it
// ---------------------------------------------------------------------------------------------------

interface LoadedPlugin extends RunPlugin {
    teardownPlugin?: PluginExports['teardownPlugin']
}

function capturingConsole(sink: (level: string, text: string) => void): ConsoleLike {
    return consoleTo((level, args) =>
        sink(level, args.map((arg) => (typeof arg === 'string' ? arg : describeError(arg))).join(' '))
    )
}

/**
 * The meta of PostHog's current executor: no cache, so the plugin keeps no retry queue and every event's fate
 * is known when onEvent settles (the replay retries transient failures itself). Its contact lookups are
 * remembered in `global`, one search per person.
 */
async function startPlugin(
    config: Record<string, string>,
    fetch: FetchFn,
    log: (level: string, text: string) => void
): Promise<LoadedPlugin> {
    const exports = loadPlugin({ fetch, console: capturingConsole(log) })
    const onEvent = exports.onEvent
    if (!onEvent) throw new SetupError('index.ts exports no onEvent: there is nothing to replay through.')
    const meta: PluginMeta = {
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

// ---------------------------------------------------------------------------------------------------
// replay()
// ---------------------------------------------------------------------------------------------------

function isoSeconds(seconds: number): string {
    return new Date(seconds * 1000).toISOString().replace('.000Z', 'Z')
}

/** One line per write a dry run did not make: row, route, event, created_at, masked contact, metadata keys. */
export function describeWrite(write: DryRunWrite, line: number | undefined): string {
    const where = line === undefined ? 'setup' : `line ${line}`
    if (write.eventName !== undefined) {
        const created = write.createdAt ?? 0
        const keys = write.metadataKeys?.length ? write.metadataKeys.join(', ') : '(none)'
        return `${where}: ${write.route} "${write.eventName}" created_at ${created} (${isoSeconds(created)}) contact ${write.contact} metadata: ${keys}`
    }
    const attributes = write.attributeKeys?.length ? ` attributes: ${write.attributeKeys.join(', ')}` : ''
    return `${where}: ${write.route}${write.contact ? ` contact ${write.contact}` : ''}${attributes}`
}

/** Where a replay writes: dry-run lines, notices, and any text redacted of the token and emails. */
interface Outputs {
    print: (line: string) => void
    notice: (line: string) => void
    redactText: (text: string) => string
}

/** What every file of one replay shares. */
interface Session {
    resolved: Resolved
    target: Target
    plugin: LoadedPlugin
    gate: WindowGate
    eventPacer?: Pacer
    rowContext: AsyncLocalStorage<number>
    outputs: Outputs
    digest: string
}

/** The file's state for this target and config, with a notice saying where the run starts. */
function openState(file: string, session: Session, outputs: Outputs): FileState {
    const { resolved, target, digest } = session
    const dir = resolved.options.checkpointDir ?? DEFAULTS.checkpointDir
    const key = { ...fingerprint(file), target: target.key ?? target.kind, config: digest }
    const paths = dir === false || target.key === null ? null : checkpointPaths(dir, key)
    const state = new FileState(key, paths, resolved.options.restart)
    if (paths && !state.resumed) {
        const others = otherCheckpoints(dir as string, key)
        if (others.length > 0) {
            outputs.notice(
                `${file}: no checkpoint for this target and config, so every event is sent (${others.length} checkpoint(s) of another target, config or version of the file do not apply).`
            )
        }
    }
    return state
}

async function replayFile(file: string, session: Session): Promise<FileSummary> {
    const { resolved, target } = session
    const shown = displayPath(file)
    // Notices name the file as the user typed it.
    const outputs = {
        ...session.outputs,
        notice: (line: string) => session.outputs.notice(line.replace(file, shown)),
    }
    const tally = new Tally(file)
    let kind: InputKind
    try {
        kind = detectInput(file, resolved.options.format)
    } catch (error) {
        if (!(error instanceof InputError)) throw error
        return { ...tally.summary, error: error.message, stoppedBecause: error.message }
    }
    tally.summary.kind = kind
    if (kind.note) outputs.notice(`${file}: ${kind.note}.`)
    const state = openState(file, session, outputs)
    tally.summary.checkpoint = state.paths?.checkpoint
    tally.summary.failedFile = state.paths?.failed
    tally.summary.retriedFromEarlier = state.toRetry
    if (state.resumed && state.wasReadToEnd && state.toRetry === 0) {
        outputs.notice(
            `${file}: every event was already delivered to this target with this config: nothing to do.`
        )
        tally.failedSoFar(state.failed())
        return { ...tally.summary, readToEnd: true, complete: true }
    }
    if (state.resumed) {
        const retrying = state.toRetry > 0 ? `, retrying ${state.toRetry} earlier failure(s)` : ''
        outputs.notice(`${file}: resuming from ${state.paths?.checkpoint}${retrying}.`)
    }
    let input: InputSource | undefined
    const showProgress =
        resolved.options.progress ?? (Boolean(process.stderr.isTTY) && target.kind !== 'dry-run')
    try {
        input = openInput(file, kind)
        const progress = createProgress(showProgress, input.size, tally.summary)
        const run = new FileRun({
            run: resolved.run,
            plugin: session.plugin,
            seed: target.seed,
            gate: session.gate,
            eventPacer: session.eventPacer,
            rowContext: session.rowContext,
            state,
            tally,
            progress,
            input,
            redactText: outputs.redactText,
        })
        const end = await run.run().finally(() => progress.stop())
        tally.failedSoFar(state.failed())
        return { ...tally.summary, ...end, complete: state.complete(end.readToEnd) }
    } finally {
        input?.close()
    }
}

function emulatorCounts(emulator: Emulator): ReplaySummary['emulator'] {
    return {
        url: emulator.url,
        eventsStored: emulator.events().length,
        deduplicated: emulator.stats().eventsDeduplicated,
    }
}

/** Replays every file of `options.inputs` through the plugin, one after the other; resolves to the summary (see `exitCode`). */
export async function replay(options: ReplayOptions): Promise<ReplaySummary> {
    const started = Date.now()
    const resolved = resolveOptions(options)
    const files = expandInputs(options.inputs)
    const outputs: Outputs = {
        print: options.print ?? ((line) => process.stdout.write(`${line}\n`)),
        notice: options.notice ?? ((line) => process.stderr.write(`${line}\n`)),
        redactText: (text) => redact(text, resolved.config.intercomApiKey),
    }
    // Tells a dry-run write which row it came from, across the plugin's awaits.
    const rowContext = new AsyncLocalStorage<number>()
    const target = await openTarget(resolved, (write) =>
        outputs.print(describeWrite(write, rowContext.getStore()))
    )
    try {
        const gate = new WindowGate(options.signal)
        const meter = new CallMeter(gate)
        const log = (level: string, text: string): void => options.onLog?.(level, outputs.redactText(text))
        const plugin = await startPlugin(resolved.config, meter.wrap(target.fetch), log)
        const session: Session = {
            resolved,
            target,
            plugin,
            gate,
            eventPacer:
                options.rate === undefined
                    ? undefined
                    : new Pacer(positive('rate', options.rate, false), options.signal),
            rowContext,
            outputs,
            digest: configDigest(resolved.config),
        }
        const summaries: FileSummary[] = []
        for (const file of files) summaries.push(await replayFile(file, session))
        await plugin.teardownPlugin?.(plugin.meta)
        return {
            target: target.kind,
            files: summaries,
            intercomCalls: meter.snapshot(),
            emulator: target.emulator && emulatorCounts(target.emulator),
            interrupted: Boolean(options.signal?.aborted),
            durationMs: Date.now() - started,
        }
    } finally {
        await target.close()
    }
}
