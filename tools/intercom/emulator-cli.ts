/** Runs the Intercom emulator by hand, to point the plugin or a tool at it (flags: USAGE).
 * Prints the URL and token, logs one line per request (method, path, status; never bodies), and prints the
 * stats on Ctrl-C.
 */
import { readFileSync } from 'node:fs'
import { EmulatorOptions, LongStringPolicy, Region, REGIONS, SeedContact, startEmulator } from './emulator'
import {
    choiceFlag,
    FlagTable,
    flagTable,
    numberFlag,
    parseFlags,
    printedHelp,
    runCli,
    UsageError,
} from '../lib/flags'

export const USAGE = `Usage: npx tsx tools/intercom/emulator-cli.ts [options]

  --host <addr>            loopback address to listen on (default 127.0.0.1)
  --port <n>               port (default 0: a free one)
  --token <t>              accepted Bearer token; repeat for several (default test-token)
  --region <r>             US | Europe | AU, as GET /me reports it (default US)
  --rate-limit <n>         calls per window (default 1666)
  --window-seconds <s>     rate-limit window (default 10)
  --error-rate <0..1>      share of requests answered 500/502/503 (default 0)
  --drop-rate <0..1>       share of requests whose connection is dropped (default 0)
  --latency-ms <ms>        delay added to each response (default 0)
  --search-lag-ms <ms>     delay before a created contact is searchable (default 0)
  --max-event-names <n>    active event names allowed (default 120)
  --long-strings <policy>  reject | truncate metadata strings over 255 characters (default reject)
  --seed <n>               seed of the fault PRNG (default 1)
  --seed-file <path>       JSON file: a list of contacts, or {"contacts": [...]}
  --quiet                  do not log requests
  --help                   show this help`

/** Accepts `[contact, …]` or `{ "contacts": [contact, …] }`; each needs an email and a role. */
export function parseSeedFile(text: string, path: string): SeedContact[] {
    const parsed: unknown = JSON.parse(text)
    const list = Array.isArray(parsed) ? parsed : (parsed as { contacts?: unknown } | null)?.contacts
    if (!Array.isArray(list)) throw new Error(`${path}: expected a list of contacts or {"contacts": [...]}`)
    const valid = (c?: SeedContact) =>
        typeof c?.email === 'string' && (c.role === 'user' || c.role === 'lead')
    const bad = list.findIndex((item) => !valid(item))
    if (bad !== -1)
        throw new Error(`${path}: contact #${bad + 1} needs an "email" and a "role" of user or lead`)
    return list as SeedContact[]
}

/** Number flags and the option each sets. */
const NUMBER_FLAGS = {
    port: 'port',
    'rate-limit': 'rateLimit',
    'window-seconds': 'windowSeconds',
    seed: 'seed',
    'error-rate': 'errorRate',
    'drop-rate': 'dropRate',
    'latency-ms': 'latencyMs',
    'search-lag-ms': 'searchLagMs',
    'max-event-names': 'maxEventNames',
} as const

const FLAGS: FlagTable = {
    ...flagTable(
        [...Object.keys(NUMBER_FLAGS), 'host', 'region', 'long-strings', 'seed-file'],
        ['quiet', 'help']
    ),
    token: { type: 'string', multiple: true },
}

/** A seed file read and checked; any problem is a UsageError naming the file. */
export function readSeedFile(file: string, readFile: (path: string) => string): SeedContact[] {
    try {
        return parseSeedFile(readFile(file), file)
    } catch (error) {
        throw new UsageError(`${file}: ${(error as Error).message.replace(`${file}: `, '')}`)
    }
}

/** Flags to emulator options; throws with a message naming the flag on bad input. */
export function parseCliArgs(argv: string[], readFile = (path: string) => readFileSync(path, 'utf8')) {
    const values = parseFlags(argv, FLAGS).values as Record<string, string | string[] | boolean | undefined>
    const text = (name: string) => values[name] as string | undefined
    const numbers = Object.entries(NUMBER_FLAGS).map(([flag, option]) => [
        option,
        numberFlag(flag, text(flag)),
    ])
    const seedFile = text('seed-file')
    const policies: LongStringPolicy[] = ['reject', 'truncate']
    const options: EmulatorOptions = {
        ...Object.fromEntries(numbers),
        host: text('host'),
        tokens: values.token as string[] | undefined,
        region: choiceFlag<Region>('region', text('region'), REGIONS),
        longStrings: choiceFlag('long-strings', text('long-strings'), policies),
        contacts: seedFile === undefined ? undefined : readSeedFile(seedFile, readFile),
    }
    return { options, quiet: Boolean(values.quiet), help: Boolean(values.help) }
}

/** Serves until Ctrl-C; resolves at once (exit 0) for --help. */
async function serve(argv: string[]): Promise<number> {
    const settings = parseCliArgs(argv)
    if (printedHelp(settings.help, USAGE)) return 0
    const emulator = await startEmulator(settings.options)
    const { url, options } = emulator
    const [token, contacts] = [options.tokens[0], emulator.contacts().length]
    console.log(`Intercom emulator listening on ${url}`)
    console.log(`token: ${token}   region: ${options.region}   contacts: ${contacts}`)
    console.log(`try:   curl -H 'Authorization: Bearer ${token}' -H 'Accept: application/json' ${url}/me`)
    console.log('Ctrl-C to stop')
    if (!settings.quiet) {
        emulator.onRequest((r) =>
            console.log(`${new Date(r.at).toISOString()} ${r.method} ${r.path} ${r.status || 'dropped'}`)
        )
    }
    const stop = async () => {
        console.log(`\nstats: ${JSON.stringify(emulator.stats(), null, 2)}`)
        await emulator.close()
        process.exit(0)
    }
    process.once('SIGINT', () => void stop())
    process.once('SIGTERM', () => void stop())
    return 0
}

if (require.main === module) {
    void runCli('npx tsx tools/intercom/emulator-cli.ts', () => serve(process.argv.slice(2))).then((code) => {
        if (code !== 0) process.exit(code)
    })
}
