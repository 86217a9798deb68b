/** `npm run replay`: the replay's command line (flags → options, the summary, the exit code). */
import { readFileSync } from 'node:fs'

import manifest from '../../plugin.json'
import { ConfigError } from '../../index'
import { readSeedFile } from '../intercom/emulator-cli'
import { isRecord } from '../intercom/rules'
import { describeError } from '../runtime/harness'
import { choiceFlag, flagTable, numberFlag, parseFlags, printedHelp, runCli, UsageError } from '../lib/flags'
import { CheckpointError } from './checkpoint'
import { redact } from './fetch'
import { DEFAULTS, exitCode, formatSummary, replay, ReplayOptions, ReplayTarget, SetupError } from './index'
import { INPUT_FORMATS } from './input'

export const USAGE = `Usage: npm run replay -- --events <list> [options] <export>...

Sends the PostHog events of export files to Intercom through the plugin (index.ts, run as PostHog runs it),
as fast as Intercom's rate limit allows, and remembers which events are done. The token and emails are never
printed.

  npm run replay -- --events signed_up,purchase --dry-run tools/replay/examples/events.jsonl
  npm run replay -- --events signed_up,purchase --emulator tools/replay/examples/
  INTERCOM_API_KEY=… npm run replay -- --events signed_up,purchase 'exports/*.parquet'

Input: files, folders (every file under them) or quoted globs, as arguments or with --file
  --file <path>              an export; repeatable
  --format <f>               jsonl | csv | parquet; default: told by the content. JSON Lines and CSV may be
                             gzip- or Brotli-compressed (Brotli has no signature: it is tried when the bytes
                             are neither text, gzip nor Parquet). CSV is the PostHog UI's export, whose
                             nested columns (properties.$set.email) are rebuilt into objects.
  --limit <n>                stop after n rows in all (a trial; the next run goes on from there)

Target (default: the real Intercom)
  --emulator                 a local Intercom emulator instead, with a contact for each email of the files
  --seed-contacts <file>     ... or with these contacts: [{"email": "a@b.com", "role": "user"}, ...]
  --emulator-url <url>       an emulator already running (npx tsx tools/intercom/emulator-cli.ts), seeded there; its
                             token in INTERCOM_API_KEY or --token (default test-token). Checkpoints are kept.
  --dry-run                  show what would be sent (event, created_at, masked email, metadata keys);
                             Intercom is answered inside the process and no request leaves it

Plugin config (plugin.json keys; flags override --config, which overrides the environment)
  --events <list>            Triggering events, e.g. signed_up,purchase (required)
  --token <token>            Intercom access token; prefer INTERCOM_API_KEY (flags show in ps and history)
  --region <US|EU|AU>        Intercom region; default INTERCOM_REGION, else US
  --metadata <list>          Event properties to send, e.g. plan,revenue,$current_url:url
  --map <pairs>              Event name mapping, e.g. '$identify:identified'
  --email-property <name>    Email property (default email)
  --ignore-domains <list>    Ignored email domains
  --config <file.json>       {"triggeringEvents": "...", ...}: any plugin.json keys
  --set <key=value>          one plugin.json key, repeatable: --set 'contactSync=create or update contacts'

Speed
  --concurrency <n>          events in flight (default ${DEFAULTS.concurrency}). Each of Intercom's 10 s windows is used
                             up to the 2% the plugin keeps in reserve, then the replay waits for the reset.
  --rate <n>                 at most n events per second (default: no cap), to leave room for other apps

Checkpoints (one per file, target and config; a dry run and --emulator write none)
  --checkpoint-dir <dir>     default ${DEFAULTS.checkpointDir}; holds <file>.<key>.checkpoint.json and .failed.jsonl,
                             the events not delivered with their line, uuid and reason
  --restart                  ignore the checkpoints of this target and config: send every event again
  Run the same command again to go on after a stop and to retry the failed events. Re-sending is safe:
  Intercom deduplicates on contact + event name + created_at.

Output
  --no-progress              no progress bar (there is none when stderr is not a terminal)
  --verbose                  print the plugin's log lines (they hold no email and no token)
  --help                     this text

Exit code: 0 when every event is delivered or refused for good with a reason (see the summary); 1 while
events are left to deliver (run the same command again); 2 for a usage or config error; 130 when
interrupted (Ctrl-C: events in flight finish and the checkpoints are written).`

/** The flags that set one plugin.json key each. */
const CONFIG_FLAGS = {
    events: 'triggeringEvents',
    metadata: 'metadataProperties',
    map: 'eventNameMapping',
    'email-property': 'emailProperty',
    'ignore-domains': 'ignoredEmailDomains',
    region: 'region',
    token: 'intercomApiKey',
} as const

const CONFIG_KEYS = new Set(
    manifest.config.flatMap((field) => ('key' in field && field.key ? [field.key] : []))
)

const FLAGS = {
    ...flagTable(
        [
            ...(Object.keys(CONFIG_FLAGS) as Array<keyof typeof CONFIG_FLAGS>),
            ...(['format', 'seed-contacts', 'emulator-url', 'config', 'checkpoint-dir'] as const),
            ...(['limit', 'rate', 'concurrency'] as const),
        ],
        ['emulator', 'dry-run', 'restart', 'no-progress', 'verbose', 'help'] as const
    ),
    file: { type: 'string', multiple: true },
    set: { type: 'string', multiple: true },
} as const

type Flags = ReturnType<typeof parseFlags<typeof FLAGS>>['values']
type Read = (path: string) => string

function configKey(key: string, source: string): string {
    if (!CONFIG_KEYS.has(key)) {
        throw new UsageError(
            `${source}: '${key}' is not a plugin.json key (known: ${[...CONFIG_KEYS].join(', ')}).`
        )
    }
    return key
}

/** --config file: plugin.json keys; values become strings, as PostHog stores them. */
function readConfigFile(path: string, read: Read): Record<string, string> {
    let parsed: unknown
    try {
        parsed = JSON.parse(read(path))
    } catch (error) {
        throw new UsageError(`--config ${path}: ${(error as Error).message}`)
    }
    if (!isRecord(parsed)) {
        throw new UsageError(`--config ${path}: expected a JSON object of plugin.json keys.`)
    }
    return Object.fromEntries(
        Object.entries(parsed).map(([key, value]) => [configKey(key, path), String(value)])
    )
}

/** Environment, then --config, then flags: the most specific wins. */
function buildConfig(flags: Flags, env: NodeJS.ProcessEnv, read: Read): Record<string, string> {
    const config: Record<string, string> = {}
    if (env.INTERCOM_API_KEY) config.intercomApiKey = env.INTERCOM_API_KEY
    if (env.INTERCOM_REGION) config.region = env.INTERCOM_REGION
    if (flags.config) Object.assign(config, readConfigFile(flags.config, read))
    for (const [flag, key] of Object.entries(CONFIG_FLAGS)) {
        const value = flags[flag as keyof typeof CONFIG_FLAGS]
        if (value !== undefined) config[key] = value
    }
    for (const pair of flags.set ?? []) {
        const equals = pair.indexOf('=')
        if (equals < 1) throw new UsageError(`--set needs key=value, not '${pair}'.`)
        config[configKey(pair.slice(0, equals).trim(), '--set')] = pair.slice(equals + 1)
    }
    return config
}

/** Only loopback: the token of the emulator must not travel anywhere else. */
function emulatorUrl(value: string): string {
    if (!URL.canParse(value)) {
        throw new UsageError(`--emulator-url needs a URL such as http://127.0.0.1:4010, not '${value}'.`)
    }
    const url = new URL(value)
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
        throw new UsageError(
            `--emulator-url must be on this machine (127.0.0.1, localhost or [::1]), not ${url.hostname}.`
        )
    }
    return url.origin
}

function targetOf(flags: Flags, read: Read): ReplayTarget {
    const chosen = (['dry-run', 'emulator', 'emulator-url'] as const).filter((flag) => flags[flag])
    if (chosen.length > 1) throw new UsageError(`Choose one target: --${chosen.join(' or --')}.`)
    if (flags['seed-contacts'] && !flags.emulator)
        throw new UsageError('--seed-contacts goes with --emulator.')
    if (flags['emulator-url']) return { kind: 'emulator', url: emulatorUrl(flags['emulator-url']) }
    if (flags['dry-run']) return { kind: 'dry-run' }
    if (!flags.emulator) return { kind: 'intercom' }
    const seedFile = flags['seed-contacts']
    return { kind: 'emulator', seedContacts: seedFile ? readSeedFile(seedFile, read) : undefined }
}

/** argv (after `--`) → replay options; throws UsageError with a message naming the flag. */
export function parseCli(
    argv: string[],
    env: NodeJS.ProcessEnv = process.env,
    read: Read = (path) => readFileSync(path, 'utf8')
): { help: boolean; verbose: boolean; options: ReplayOptions } {
    const { values: flags, positionals } = parseFlags(argv, FLAGS, true)
    const help = Boolean(flags.help)
    const inputs = [...(flags.file ?? []), ...positionals]
    const options: ReplayOptions = {
        inputs,
        format: choiceFlag('format', flags.format, INPUT_FORMATS),
        config: help ? {} : buildConfig(flags, env, read),
        target: help ? { kind: 'dry-run' } : targetOf(flags, read),
        limit: numberFlag('limit', flags.limit, { integer: true, min: 0 }),
        rate: numberFlag('rate', flags.rate, { min: Number.MIN_VALUE }),
        concurrency: numberFlag('concurrency', flags.concurrency, { integer: true, min: 1 }),
        checkpointDir: flags['checkpoint-dir'],
        restart: Boolean(flags.restart),
        progress: flags['no-progress'] ? false : undefined,
    }
    if (!help && inputs.length === 0) {
        throw new UsageError('Name the export files to replay: as arguments, or with --file <path>.')
    }
    return { help, verbose: Boolean(flags.verbose), options }
}

const SIGNALS = ['SIGINT', 'SIGTERM'] as const

/** Ctrl-C once: stop reading, finish what is in flight, write the checkpoints. Twice: leave at once. */
function interruptOnSignal(controller: AbortController): () => void {
    const onSignal = (): void => {
        if (controller.signal.aborted) process.exit(130)
        process.stderr.write(
            '\nStopping: events in flight finish and the checkpoints are written (Ctrl-C again to quit now).\n'
        )
        controller.abort()
    }
    for (const signal of SIGNALS) process.on(signal, onSignal)
    return () => SIGNALS.forEach((signal) => process.off(signal, onSignal))
}

/** Refused before anything was sent: the config, the token or a checkpoint needs changing (exit 2). */
function isUsageProblem(error: unknown): error is Error {
    return [UsageError, SetupError, CheckpointError, ConfigError].some((kind) => error instanceof kind)
}

async function runReplay(request: ReturnType<typeof parseCli>, argv: string[]): Promise<number> {
    if (argv.some((arg) => arg === '--token' || arg.startsWith('--token='))) {
        process.stderr.write(
            'Note: a token given as a flag stays in shell history and ps; INTERCOM_API_KEY is safer.\n'
        )
    }
    const controller = new AbortController()
    const stopListening = interruptOnSignal(controller)
    const onLog = request.verbose
        ? (level: string, text: string) => process.stderr.write(`[plugin ${level}] ${text}\n`)
        : undefined
    try {
        const summary = await replay({ ...request.options, signal: controller.signal, onLog })
        process.stdout.write(`${formatSummary(summary)}\n`)
        return exitCode(summary)
    } catch (error) {
        const message = redact(
            error instanceof Error ? error.message : describeError(error),
            request.options.config.intercomApiKey
        )
        // The cause stays out: its message may hold what redact() just took away.
        throw isUsageProblem(error) ? new UsageError(message) : new Error(message)
    } finally {
        stopListening()
    }
}

export function main(argv: string[]): Promise<number> {
    return runCli('npm run replay --', async () => {
        const request = parseCli(argv)
        if (printedHelp(request.help, USAGE)) return 0
        return runReplay(request, argv)
    })
}

if (require.main === module) {
    void main(process.argv.slice(2)).then((code) => {
        process.exitCode = code
    })
}
