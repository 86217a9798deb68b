/**
 * Replays a PostHog event export (JSON Lines, plain or gzip, or the UI's CSV) into Intercom through the
 * plugin itself: index.ts is loaded as PostHog loads it (Babel, then a sandbox) and each row goes through
 * its onEvent, so what reaches Intercom is exactly what PostHog would have sent. Targets: the real Intercom,
 * a local emulator, or a dry run answered inside the process. Paced below Intercom's rate limit, resumable
 * from a checkpoint, and it never prints the token or a full email.
 *
 *   npm run replay -- --file events.jsonl.gz --events signed_up,purchase --metadata plan,revenue
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { existsSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'

import { ConfigError, parseConfig, parseRegion, REGION_HOSTS } from '../index'
import manifest from '../plugin.json'
import { Emulator, Region as EmulatorRegion, SeedContact, startEmulator } from './emulator'
import { parseSeedFile } from './emulator-cli'
import { createMemoryStorage, createPluginCache, describeError } from './harness'
import {
    ConsoleLike,
    FetchFn,
    hostNodeFetch,
    IntercomHost,
    loadPlugin,
    PluginExports,
    PluginMeta,
    redirectingFetch,
    consoleTo,
} from './load-plugin'
import { createBoundedStore } from './replay-cache'
import {
    Checkpoint,
    CheckpointError,
    emptyCounts,
    fingerprint,
    FileFingerprint,
    readCheckpoint,
    resumePosition,
} from './replay-checkpoint'
import { CallMeter, DryRunWrite, dryRunFetch, intercomOnlyFetch, redact } from './replay-fetch'
import { detectFormat, InputFormat, InputSource, openInput, Position } from './replay-input'
import { Pacer } from './replay-pace'
import { CheckpointWriter, countQueueDrop, ReplayRun, RunParts, RunPlugin, RunSettings } from './replay-run'
import {
    createProgress,
    exitCode,
    formatSummary,
    ReplaySummary,
    ReplayTargetKind,
    Tally,
} from './replay-report'

export { exitCode, formatSummary } from './replay-report'
export type { ReplaySummary } from './replay-report'

// ---------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------

export const DEFAULTS = {
    /** Events per second: 6,000 a minute, well below Intercom's 10,000 calls a minute. */
    rate: 100,
    concurrency: 4,
    /** Intercom calls per second, whatever the events cost: 9,000 a minute (a new contact costs a search too). */
    maxCallsPerSecond: 150,
    checkpoint: '.replay-checkpoint.json',
    checkpointEvery: 1000,
    /** One rate-limit window of Intercom: the retry queue is drained this often. */
    drainIntervalMs: 10_000,
    drainRounds: 30,
} as const

export type ReplayTarget =
    /** The real Intercom of the configured region; the token is in `config.intercomApiKey`. */
    | { kind: 'intercom' }
    /**
     * An Intercom emulator: `emulator` if given (left running), else one started on loopback and stopped at
     * the end. Contacts: `seedContacts`, and, unless `deriveContacts` is false, one user per email of the file
     * (default: only when no seedContacts are given), so that a demo finds its contacts.
     */
    | { kind: 'emulator'; emulator?: Emulator; seedContacts?: SeedContact[]; deriveContacts?: boolean }
    /** Intercom answered in the process: nothing leaves it; writes are printed instead. */
    | { kind: 'dry-run' }

export interface ReplayOptions {
    file: string
    /** Default: from the file name (`.csv`, `.csv.gz` → csv, else JSON Lines). Gzip is recognised by content. */
    format?: InputFormat
    /** The plugin config as PostHog stores it: plugin.json keys, string values. */
    config: Record<string, string>
    target: ReplayTarget
    /** Events per second handed to the plugin (rows it ignores without calling Intercom are not paced). */
    rate?: number
    concurrency?: number
    maxCallsPerSecond?: number
    /** Checkpoint file; false for none. A dry run reads it but never writes it. */
    checkpoint?: string | false
    checkpointEvery?: number
    /** Ignore an existing checkpoint: replay from the first line (and overwrite it). */
    restart?: boolean
    /** Stop after this many rows (a trial run, resumable). */
    limit?: number
    /** Abort: stop reading, let events in flight finish, write the checkpoint. */
    signal?: AbortSignal
    progress?: boolean
    /** The HTTP client under the host guard or the emulator redirect; default node-fetch 2, PostHog's own. */
    fetch?: FetchFn
    drainIntervalMs?: number
    drainRounds?: number
    /** Factor on PostHog's 5/10/20/40 s waits between onEvent attempts after a RetryError (tests use a tiny one). */
    retryDelayScale?: number
    /** Dry-run writes; default stdout. */
    print?: (line: string) => void
    /** Notices (resuming, warnings); default stderr. */
    notice?: (line: string) => void
    /** The plugin's log lines, redacted; default dropped. */
    onLog?: (level: string, text: string) => void
}

/** How GET /me names each region: Intercom (and so the emulator) says `Europe`, not `EU`. */
const EMULATOR_REGIONS: Record<string, EmulatorRegion> = { US: 'US', EU: 'Europe', AU: 'AU' }
const DRY_RUN_TOKEN = 'dry-run-token'

/** Bad flags or options: nothing was sent. */
export class UsageError extends Error {}
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
    rate: number
    maxCallsPerSecond: number
    checkpointEvery: number
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
    if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 0)) {
        throw new UsageError(`limit must be a whole number, not ${options.limit}.`)
    }
    const paced = kind !== 'dry-run' // a dry run makes no calls worth pacing
    return {
        options,
        config,
        region: parseRegion(config.region, config.useEuropeanDataStorage),
        rate: paced ? positive('rate', options.rate ?? DEFAULTS.rate, false) : Infinity,
        maxCallsPerSecond: paced
            ? positive('maxCallsPerSecond', options.maxCallsPerSecond ?? DEFAULTS.maxCallsPerSecond, false)
            : Infinity,
        checkpointEvery: positive(
            'checkpointEvery',
            options.checkpointEvery ?? DEFAULTS.checkpointEvery,
            true
        ),
        run: {
            settings: parseConfig(config), // the plugin's own message for a config it would refuse
            concurrency: positive('concurrency', options.concurrency ?? DEFAULTS.concurrency, true),
            limit: options.limit,
            signal: options.signal,
            retryDelayScale: options.retryDelayScale ?? 1,
            drainIntervalMs: options.drainIntervalMs ?? DEFAULTS.drainIntervalMs,
            drainRounds: options.drainRounds ?? DEFAULTS.drainRounds,
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
    emulator?: Emulator
    /** Adds a contact for an email the file uses, when the emulator is seeded from the file. */
    seed?: (email: string) => void
    close(): Promise<void>
}

function regionHost(region: keyof typeof REGION_HOSTS): IntercomHost {
    return new URL(REGION_HOSTS[region]).hostname as IntercomHost
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
    const { options, region } = resolved
    const base = options.fetch ?? hostNodeFetch
    const done = async (): Promise<void> => undefined
    switch (options.target.kind) {
        case 'dry-run':
            return { kind: 'dry-run', fetch: dryRunFetch(onWrite), close: done }
        case 'emulator':
            return emulatorTarget(options.target, region, base)
        case 'intercom':
            return { kind: 'intercom', fetch: intercomOnlyFetch(regionHost(region), base), close: done }
    }
}

// ---------------------------------------------------------------------------------------------------
// The plugin, loaded as PostHog loads it
// ---------------------------------------------------------------------------------------------------

/** The plugin-server meta is shared by every call: `global` and the cache (with the retry queue) persist. */
interface LoadedPlugin extends RunPlugin {
    teardownPlugin?: PluginExports['teardownPlugin']
}

/** The sandbox console: every line goes to `sink` with its level. */
function capturingConsole(sink: (level: string, text: string) => void): ConsoleLike {
    return consoleTo((level, args) =>
        sink(level, args.map((arg) => (typeof arg === 'string' ? arg : describeError(arg))).join(' '))
    )
}

async function startPlugin(
    config: Record<string, string>,
    fetch: FetchFn,
    log: (level: string, text: string) => void
): Promise<LoadedPlugin> {
    const exports = loadPlugin({ fetch, console: capturingConsole(log) })
    const onEvent = exports.onEvent
    if (!onEvent) throw new SetupError('index.ts exports no onEvent: there is nothing to replay through.')
    // The meta of PostHog's plugin server, whose cache lets the plugin keep its own retry queue.
    const meta: PluginMeta = {
        config,
        global: {},
        attachments: {},
        cache: createPluginCache(createBoundedStore(), 'replay/'),
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
    return { onEvent, runEveryMinute: exports.runEveryMinute, teardownPlugin: exports.teardownPlugin, meta }
}

// ---------------------------------------------------------------------------------------------------
// replay()
// ---------------------------------------------------------------------------------------------------

function isoSeconds(seconds: number): string {
    return new Date(seconds * 1000).toISOString().replace('.000Z', 'Z')
}

/** One line per write a dry run did not make: row, route, event, created_at, masked contact, metadata keys. */
export function describeWrite(write: DryRunWrite, line: number | undefined): string {
    const where = line === undefined ? 'retry queue' : `line ${line}`
    if (write.eventName !== undefined) {
        const created = write.createdAt ?? 0
        const keys = write.metadataKeys?.length ? write.metadataKeys.join(', ') : '(none)'
        return `${where}: ${write.route} "${write.eventName}" created_at ${created} (${isoSeconds(created)}) contact ${write.contact} metadata: ${keys}`
    }
    const attributes = write.attributeKeys?.length ? ` attributes: ${write.attributeKeys.join(', ')}` : ''
    return `${where}: ${write.route}${write.contact ? ` contact ${write.contact}` : ''}${attributes}`
}

interface Prepared {
    file: string
    fingerprint: FileFingerprint
    checkpointPath: string | null
    existing: Checkpoint | null
    resumeAt: Position
}

function prepareCheckpoint(options: ReplayOptions): Prepared {
    const file = resolve(options.file)
    if (!existsSync(file)) throw new UsageError(`No such file: ${options.file}`)
    const current = fingerprint(file)
    const checkpointPath =
        options.checkpoint === false ? null : resolve(options.checkpoint ?? DEFAULTS.checkpoint)
    const existing = checkpointPath && !options.restart ? readCheckpoint(checkpointPath) : null
    const resumeAt = resumePosition(existing, current, checkpointPath ?? '')
    return { file, fingerprint: current, checkpointPath, existing, resumeAt }
}

function emptySummary(prepared: Prepared, kind: ReplayTargetKind, started: number): ReplaySummary {
    return {
        file: prepared.file,
        target: kind,
        resumedAfterLine: prepared.resumeAt.line,
        rowsRead: 0,
        delivered: 0,
        synced: 0,
        skipped: {},
        queued: 0,
        queue: { delivered: 0, dropped: 0, left: 0 },
        retried: 0,
        failed: {},
        intercomCalls: { total: 0, byRoute: {} },
        complete: true,
        interrupted: false,
        checkpoint: prepared.checkpointPath ?? undefined,
        durationMs: Date.now() - started,
    }
}

/** Where a replay writes: dry-run lines, notices, and any text redacted of the token and emails. */
interface Outputs {
    print: (line: string) => void
    notice: (line: string) => void
    redactText: (text: string) => string
}

function outputsOf(options: ReplayOptions, token: string | undefined): Outputs {
    return {
        print: options.print ?? ((line) => process.stdout.write(`${line}\n`)),
        notice: options.notice ?? ((line) => process.stderr.write(`${line}\n`)),
        redactText: (text) => redact(text, token),
    }
}

/** Replays an export through the plugin; resolves to the summary (see `exitCode`). */
export async function replay(options: ReplayOptions): Promise<ReplaySummary> {
    const started = Date.now()
    const resolved = resolveOptions(options)
    const outputs = outputsOf(options, resolved.config.intercomApiKey)
    const prepared = prepareCheckpoint(options)
    if (prepared.existing?.complete) {
        outputs.notice(
            `${prepared.file} was replayed completely already (${prepared.checkpointPath}): nothing to do; pass --restart to replay it again.`
        )
        return emptySummary(prepared, options.target.kind, started)
    }
    if (prepared.resumeAt.line > 0) {
        outputs.notice(
            `Resuming after line ${prepared.resumeAt.line} (checkpoint ${prepared.checkpointPath}).`
        )
    }
    // Tells a dry-run write which row it came from, across the plugin's awaits.
    const rowContext = new AsyncLocalStorage<number>()
    const target = await openTarget(resolved, (write) =>
        outputs.print(describeWrite(write, rowContext.getStore()))
    )
    let input: InputSource | undefined
    try {
        input = openInput(prepared.file, options.format ?? detectFormat(prepared.file), prepared.resumeAt)
        return await runReplay({ resolved, prepared, target, input, rowContext, outputs, started })
    } finally {
        input?.close()
        await target.close()
    }
}

interface Opened {
    resolved: Resolved
    prepared: Prepared
    target: Target
    input: InputSource
    rowContext: AsyncLocalStorage<number>
    outputs: Outputs
    started: number
}

function checkpointWriter(opened: Opened): CheckpointWriter | null {
    const { prepared, target, resolved } = opened
    if (prepared.checkpointPath === null || target.kind === 'dry-run') return null
    const earlier = prepared.existing?.counts ?? emptyCounts()
    return new CheckpointWriter(
        prepared.checkpointPath,
        prepared.fingerprint,
        earlier,
        resolved.checkpointEvery
    )
}

/** Starts the plugin behind the meter, runs every row, writes the final checkpoint. */
async function runReplay(opened: Opened): Promise<ReplaySummary> {
    const { resolved, prepared, target, input, outputs } = opened
    const { signal } = resolved.options
    const tally = new Tally()
    // A dry run prints its lines on stdout: a bar redrawn on the same terminal would garble them.
    const showProgress =
        resolved.options.progress ?? (Boolean(process.stderr.isTTY) && target.kind !== 'dry-run')
    const progress = createProgress(showProgress, input.size, input.bytesDone(), tally)
    try {
        const eventPacer = new Pacer(resolved.rate, signal)
        // Intercom's rate-limit headers, seen by the meter, hold new events back until the window resets.
        const meter = new CallMeter(new Pacer(resolved.maxCallsPerSecond, signal), (until) =>
            eventPacer.pauseUntil(until)
        )
        const log = (level: string, text: string): void => {
            countQueueDrop(tally, level, text)
            resolved.options.onLog?.(level, outputs.redactText(text))
        }
        const plugin = await startPlugin(resolved.config, meter.wrap(target.fetch), log)
        const checkpoint = checkpointWriter(opened)
        const parts: RunParts = {
            run: resolved.run,
            plugin,
            seed: target.seed,
            meter,
            eventPacer,
            rowContext: opened.rowContext,
            tally,
            checkpoint,
            progress,
            input,
            redactText: outputs.redactText,
        }
        const run = new ReplayRun(parts, prepared.resumeAt)
        const { endOfFile } = await run.run()
        const complete = endOfFile && run.allFinished
        checkpoint?.write(run.position(), tally.counts(meter.snapshot().total), complete)
        await plugin.teardownPlugin?.(plugin.meta)
        return {
            ...emptySummary(prepared, target.kind, opened.started),
            ...tallied(tally),
            intercomCalls: meter.snapshot(),
            emulator: target.emulator && emulatorCounts(target.emulator),
            complete,
            interrupted: Boolean(signal?.aborted),
            checkpoint: checkpoint ? (prepared.checkpointPath ?? undefined) : undefined,
            durationMs: Date.now() - opened.started,
        }
    } finally {
        progress.stop()
    }
}

function tallied(
    tally: Tally
): Pick<
    ReplaySummary,
    'rowsRead' | 'delivered' | 'synced' | 'skipped' | 'queued' | 'queue' | 'retried' | 'failed'
> {
    const { rows, delivered, synced, skipped, queued, queue, retried, failed } = tally
    return { rowsRead: rows, delivered, synced, skipped, queued, queue, retried, failed }
}

function emulatorCounts(emulator: Emulator): ReplaySummary['emulator'] {
    const stats = emulator.stats()
    return {
        url: emulator.url,
        eventsStored: emulator.events().length,
        deduplicated: stats.eventsDeduplicated,
    }
}

// ---------------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------------

export const USAGE = `Usage: npm run replay -- --file <export> [options]

Sends the PostHog events of an export file to Intercom through the plugin (index.ts, run as PostHog runs
it), paced below Intercom's rate limit and resumable. The token and emails are never printed.

Target (default: the real Intercom)
  --emulator                 a local Intercom emulator instead, with a contact for each email of the file
  --seed-contacts <file>     ... or with these contacts: [{"email": "a@b.com", "role": "user"}, ...]
  --dry-run                  show what would be sent (event, created_at, masked email, metadata keys);
                             Intercom is answered inside the process and no request leaves it

Plugin config (plugin.json keys; flags override --config, which overrides the environment)
  --token <token>            Intercom access token; prefer INTERCOM_API_KEY (flags show in ps and history)
  --region <US|EU|AU>        Intercom region; default INTERCOM_REGION, else US
  --events <list>            Triggering events, e.g. signed_up,purchase
  --metadata <list>          Event properties to send, e.g. plan,revenue,$current_url:url
  --map <pairs>              Event name mapping, e.g. '$identify:identified'
  --email-property <name>    Email property (default email)
  --ignore-domains <list>    Ignored email domains
  --config <file.json>       {"triggeringEvents": "...", ...}: any plugin.json keys
  --set <key=value>          one plugin.json key, repeatable: --set 'contactSync=create or update contacts'

Input
  --file <path>              JSON Lines (plain or gzip) or CSV export of PostHog events (required)
  --format <jsonl|csv>       default: from the name (.csv, .csv.gz are CSV)
  --limit <n>                stop after n rows (resume later from the checkpoint)

Pacing and resume
  --rate <n>                 events per second handed to the plugin (default ${DEFAULTS.rate}; Intercom allows
                             10,000 calls a minute, and calls are also capped at ${DEFAULTS.maxCallsPerSecond}/s)
  --concurrency <n>          events in flight (default ${DEFAULTS.concurrency})
  --checkpoint <path>        default ${DEFAULTS.checkpoint}; lines finished are skipped on the next run
  --checkpoint-every <n>     write it every n events (default ${DEFAULTS.checkpointEvery}) and at the end
  --restart                  ignore the checkpoint and replay from the first line
  Events the plugin queues after a 429, 5xx or network error are retried every 10 s while the replay
  runs, and for up to 5 minutes after the last row.

Output
  --no-progress              no progress bar (there is none when stderr is not a terminal)
  --verbose                  print the plugin's log lines (they hold no email and no token)
  --help                     this text

Exit code: 0 when nothing failed, 1 when an event failed or is still queued, 2 for a usage or
config error, 130 when interrupted (Ctrl-C: events in flight finish, the checkpoint is written).`

const FLAG_KEYS: Record<string, string> = {
    events: 'triggeringEvents',
    metadata: 'metadataProperties',
    map: 'eventNameMapping',
    'email-property': 'emailProperty',
    'ignore-domains': 'ignoredEmailDomains',
    region: 'region',
    token: 'intercomApiKey',
}

const CONFIG_KEYS = new Set(
    manifest.config
        .map((field) => ('key' in field ? field.key : undefined))
        .filter((key): key is string => Boolean(key))
)

export interface CliRequest {
    help: boolean
    verbose: boolean
    options: ReplayOptions
}

const CLI_OPTIONS = {
    file: { type: 'string' },
    format: { type: 'string' },
    emulator: { type: 'boolean' },
    'seed-contacts': { type: 'string' },
    'dry-run': { type: 'boolean' },
    token: { type: 'string' },
    region: { type: 'string' },
    events: { type: 'string' },
    metadata: { type: 'string' },
    map: { type: 'string' },
    'email-property': { type: 'string' },
    'ignore-domains': { type: 'string' },
    config: { type: 'string' },
    set: { type: 'string', multiple: true },
    limit: { type: 'string' },
    rate: { type: 'string' },
    concurrency: { type: 'string' },
    checkpoint: { type: 'string' },
    'checkpoint-every': { type: 'string' },
    restart: { type: 'boolean' },
    'no-progress': { type: 'boolean' },
    verbose: { type: 'boolean' },
    help: { type: 'boolean' },
} as const

/** Return type left to inference: parseArgs derives each flag's type from CLI_OPTIONS. */
function parseFlags(argv: string[]) {
    return parseArgs({ args: argv, options: CLI_OPTIONS, strict: true })
}

function numberFlag(name: string, value: string | undefined): number | undefined {
    if (value === undefined) return undefined
    const parsed = Number(value)
    if (value.trim() === '' || !Number.isFinite(parsed))
        throw new UsageError(`--${name} needs a number, not '${value}'.`)
    return parsed
}

function configKey(key: string, source: string): string {
    if (!CONFIG_KEYS.has(key)) {
        throw new UsageError(
            `${source}: '${key}' is not a plugin.json key (known: ${[...CONFIG_KEYS].join(', ')}).`
        )
    }
    return key
}

/** --config file: plugin.json keys; values become strings, as PostHog stores them. */
function readConfigFile(path: string, read: (path: string) => string): Record<string, string> {
    let parsed: unknown
    try {
        parsed = JSON.parse(read(path))
    } catch (error) {
        throw new UsageError(`--config ${path}: ${(error as Error).message}`)
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        throw new UsageError(`--config ${path}: expected a JSON object of plugin.json keys.`)
    }
    return Object.fromEntries(
        Object.entries(parsed).map(([key, value]) => [configKey(key, path), String(value)])
    )
}

function setFlags(values: string[] | undefined): Record<string, string> {
    return Object.fromEntries(
        (values ?? []).map((pair) => {
            const equals = pair.indexOf('=')
            if (equals < 1) throw new UsageError(`--set needs key=value, not '${pair}'.`)
            return [configKey(pair.slice(0, equals).trim(), '--set'), pair.slice(equals + 1)]
        })
    )
}

type Flags = ReturnType<typeof parseFlags>['values']

/** Environment, then --config, then flags: the most specific wins. */
function buildConfig(
    flags: Flags,
    env: NodeJS.ProcessEnv,
    read: (path: string) => string
): Record<string, string> {
    const config: Record<string, string> = {}
    if (env.INTERCOM_API_KEY) config.intercomApiKey = env.INTERCOM_API_KEY
    if (env.INTERCOM_REGION) config.region = env.INTERCOM_REGION
    if (flags.config) Object.assign(config, readConfigFile(flags.config, read))
    for (const [flag, key] of Object.entries(FLAG_KEYS)) {
        const value = flags[flag as keyof Flags]
        if (typeof value === 'string') config[key] = value
    }
    return Object.assign(config, setFlags(flags.set))
}

function targetOf(flags: Flags, read: (path: string) => string): ReplayTarget {
    if (flags['dry-run'] && flags.emulator) throw new UsageError('Choose one of --dry-run and --emulator.')
    if (flags['seed-contacts'] && !flags.emulator)
        throw new UsageError('--seed-contacts goes with --emulator.')
    if (flags['dry-run']) return { kind: 'dry-run' }
    if (!flags.emulator) return { kind: 'intercom' }
    const seedFile = flags['seed-contacts']
    return { kind: 'emulator', seedContacts: seedFile ? parseSeedFile(read(seedFile), seedFile) : undefined }
}

function formatOf(value: string | undefined): InputFormat | undefined {
    if (value === undefined || value === 'jsonl' || value === 'csv') return value
    throw new UsageError(`--format must be jsonl or csv, not '${value}'.`)
}

/** argv (after `--`) → replay options; throws UsageError with a message naming the flag. */
export function parseCli(
    argv: string[],
    env: NodeJS.ProcessEnv = process.env,
    read: (path: string) => string = (path) => readFileSync(path, 'utf8')
): CliRequest {
    let parsed: ReturnType<typeof parseFlags>
    try {
        parsed = parseFlags(argv)
    } catch (error) {
        throw new UsageError((error as Error).message)
    }
    const flags = parsed.values
    const help = Boolean(flags.help)
    if (!help && !flags.file) throw new UsageError('--file is required.')
    const options: ReplayOptions = {
        file: flags.file ?? '',
        format: formatOf(flags.format),
        config: buildConfig(flags, env, read),
        target: help ? { kind: 'dry-run' } : targetOf(flags, read),
        limit: numberFlag('limit', flags.limit),
        rate: numberFlag('rate', flags.rate),
        concurrency: numberFlag('concurrency', flags.concurrency),
        checkpoint: flags.checkpoint,
        checkpointEvery: numberFlag('checkpoint-every', flags['checkpoint-every']),
        restart: Boolean(flags.restart),
        progress: flags['no-progress'] ? false : undefined,
    }
    return { help, verbose: Boolean(flags.verbose), options }
}

/** Ctrl-C once: stop reading, finish what is in flight, write the checkpoint. Twice: leave at once. */
function interruptOnSignal(controller: AbortController): () => void {
    const onSignal = (): void => {
        if (controller.signal.aborted) process.exit(130)
        process.stderr.write(
            '\nStopping: events in flight finish and the checkpoint is written (Ctrl-C again to quit now).\n'
        )
        controller.abort()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    return () => {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
    }
}

/** Refused before anything was sent: a flag, the config, the token or the checkpoint needs changing. */
function isConfigProblem(error: unknown): boolean {
    return [UsageError, SetupError, CheckpointError, ConfigError].some((kind) => error instanceof kind)
}

export async function main(argv: string[]): Promise<number> {
    let request: CliRequest
    try {
        request = parseCli(argv)
    } catch (error) {
        process.stderr.write(`${(error as Error).message}\n\n${USAGE}\n`)
        return 2
    }
    if (request.help) {
        process.stdout.write(`${USAGE}\n`)
        return 0
    }
    if (argv.some((arg) => arg === '--token' || arg.startsWith('--token='))) {
        process.stderr.write(
            'Note: a token given as a flag stays in shell history and ps; INTERCOM_API_KEY is safer.\n'
        )
    }
    const controller = new AbortController()
    const stopListening = interruptOnSignal(controller)
    try {
        const onLog = request.verbose
            ? (level: string, text: string) => process.stderr.write(`[plugin ${level}] ${text}\n`)
            : undefined
        const summary = await replay({ ...request.options, signal: controller.signal, onLog })
        process.stdout.write(`${formatSummary(summary)}\n`)
        return summary.interrupted ? 130 : exitCode(summary)
    } catch (error) {
        const message = error instanceof Error ? error.message : describeError(error)
        process.stderr.write(`${redact(message, request.options.config.intercomApiKey)}\n`)
        return isConfigProblem(error) ? 2 : 1
    } finally {
        stopListening()
    }
}

if (require.main === module) {
    void main(process.argv.slice(2)).then((code) => {
        process.exitCode = code
    })
}
