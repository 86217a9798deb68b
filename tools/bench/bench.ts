/** `npm run bench`: what the plugin costs Intercom and the host, against the local emulator. */
import { writeFileSync } from 'node:fs'
import * as path from 'node:path'

import { choiceFlag, flagTable, numberFlag, parseFlags, printedHelp, runCli, UsageError } from '../lib/flags'
import { formatCount, formatRatio } from '../lib/report'
import { startBenchEmulator } from './emulator'
import { evaluateTargets, printIntroduction, printResults, WINDOW_LIMIT } from './report'
import { Context, runCpu, runScenario, SCENARIOS, ScenarioName, ScenarioResult } from './scenarios'
import { buildWorkload } from './workload'

export type { ScenarioResult }
/** What runBench returns and writes to the JSON file. */
export type BenchResults = Awaited<ReturnType<typeof runBench>>
export { workloadFloor } from './report'
export { buildWorkload }

/** Every option at its default; their type, BenchOptions, is read off this. */
const DEFAULT_OPTIONS = {
    events: 10_000,
    people: 500,
    /** Workers of each harness run (and, times `concurrency`, the reference client's parallel requests). */
    workers: 4,
    concurrency: 8,
    // How harness runs spread events over workers: PostHog's plugin server did not keep a person on one, but
    // PostHog's ingestion partitions events by distinct_id, so one person's events meet one worker.
    distribute: 'distinct_id' as 'round-robin' | 'distinct_id',
    /** How often the plugin-server harness runs runEveryMinute (PostHog: 60,000). */
    minuteMs: 10_000,
    // Events/s in cdp-paced. 100/s averages 1,200 calls a window, but each cdp worker's first lookups of 500
    // people pushed one window to 1,653 calls (measured): 80/s stays clear of the limit while the caches fill.
    pacedRate: 80,
    scenarios: [...SCENARIOS] as ScenarioName[],
    out: path.resolve(__dirname, '..', '..', 'bench-results.json') as string | null,
    /** `child` keeps the emulator's CPU out of the host's measurement; `in-process` is for tests. */
    emulator: 'child' as 'child' | 'in-process',
    /** Passes of the `cpu` scenario whose median is reported (one more warms up). */
    cpuPasses: 3,
    progress: true,
    seed: 42,
    print: (line: string): void => console.log(line),
}
export type BenchOptions = typeof DEFAULT_OPTIONS

/** Runs the chosen scenarios one after the other (so none steals CPU or rate limit from another). */
export async function runBench(overrides: Partial<BenchOptions> = {}) {
    const { print, out, progress, ...recorded } = { ...DEFAULT_OPTIONS, ...overrides }
    const options: BenchOptions = { ...recorded, print, out, progress }
    const workload = buildWorkload(options.events, options.people, options.seed)
    const ctx: Context = {
        options,
        workload,
        startEmulator: (limits) =>
            startBenchEmulator(options.emulator, workload.contacts, workload.events.length, limits),
    }
    printIntroduction(options)
    const scenarios: ScenarioResult[] = []
    for (const name of options.scenarios) {
        if (name === 'cpu') continue
        const result = await runScenario(name, ctx)
        scenarios.push(result)
        print(
            `  done: ${name}: ${formatCount(result.stored)} stored in ${result.wallSeconds.toFixed(1)} s, ${formatRatio(result.calls, result.stored, 3)} calls per delivered event`
        )
    }
    const results = {
        generatedAt: new Date().toISOString(),
        node: process.version,
        options: recorded,
        emulatorLimit: { calls: WINDOW_LIMIT, windowSeconds: 10 },
        scenarios,
        cpu: options.scenarios.includes('cpu') ? await runCpu(ctx) : null,
        targets: evaluateTargets(scenarios, options),
    }
    printResults(results, options)
    if (out) {
        writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`)
        print(`\nJSON: ${path.relative(process.cwd(), out) || out}`)
    }
    return results
}

/** `--quick`: small enough for a minute, the three scenarios that judge calls, loss and the window's use. */
export const QUICK: Pick<BenchOptions, 'events' | 'people' | 'scenarios' | 'out'> = {
    events: 1000,
    people: 100,
    scenarios: ['plugin-server', 'no-cache', 'replay'],
    out: null,
}

export const USAGE = `Usage: npm run bench -- [options]

What the plugin costs Intercom and the host, against the local emulator at Intercom's rate limit (1,666 calls
per 10 s window). Prints tables and the targets, each judged against the workload's own floor of calls
(1 POST per event + 1 search per person).

  --quick                  ${QUICK.events} events from ${QUICK.people} people, scenarios ${QUICK.scenarios.join(', ')}: under a minute,
                           no JSON file unless --out
  --events <n>             events (default ${DEFAULT_OPTIONS.events})
  --people <n>             people they come from (default ${DEFAULT_OPTIONS.people})
  --workers <n>            harness workers (default ${DEFAULT_OPTIONS.workers})
  --distribute <how>       round-robin | distinct_id (default ${DEFAULT_OPTIONS.distribute})
  --minute-ms <ms>         how often runEveryMinute runs in plugin-server (default ${DEFAULT_OPTIONS.minuteMs})
  --paced-rate <n>         events per second in cdp-paced (default ${DEFAULT_OPTIONS.pacedRate})
  --scenarios <list>       any of ${SCENARIOS.join(', ')} (default: all)
  --out <file>             JSON results (default bench-results.json; '' for none)
  --seed <n>               seed of the workload (default ${DEFAULT_OPTIONS.seed})
  --help                   this text`

const FLAGS = flagTable(
    ['events', 'people', 'workers', 'distribute', 'minute-ms', 'paced-rate', 'scenarios', 'out', 'seed'],
    ['quick', 'help']
)

function scenarioList(value: string | undefined): ScenarioName[] | undefined {
    const scenarios = value?.split(',').map((name) => name.trim())
    const unknown = scenarios?.find((name) => !(SCENARIOS as readonly string[]).includes(name))
    if (unknown !== undefined) {
        throw new UsageError(`--scenarios: unknown '${unknown}' (known: ${SCENARIOS.join(', ')}).`)
    }
    return scenarios as ScenarioName[] | undefined
}

/** Flags → options over the defaults (or the quick ones); `help` asks for the usage only. */
export function parseCli(argv: string[]): Partial<BenchOptions> & { help?: boolean } {
    const { values } = parseFlags(argv, FLAGS)
    if (values.help) return { help: true }
    const whole = { integer: true, min: 1 }
    const given = {
        events: numberFlag('events', values.events, whole),
        people: numberFlag('people', values.people, whole),
        workers: numberFlag('workers', values.workers, whole),
        minuteMs: numberFlag('minute-ms', values['minute-ms'], whole),
        pacedRate: numberFlag('paced-rate', values['paced-rate'], whole),
        seed: numberFlag('seed', values.seed, whole),
        scenarios: scenarioList(values.scenarios),
        distribute: choiceFlag('distribute', values.distribute, ['round-robin', 'distinct_id'] as const),
        out: values.out === undefined ? undefined : values.out === '' ? null : path.resolve(values.out),
    }
    // Flags not given leave the defaults (or the quick ones) in place.
    const flags = Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined))
    return { ...(values.quick ? QUICK : {}), ...flags }
}

export function main(argv: string[]): Promise<number> {
    return runCli('npm run bench --', async () => {
        const options = parseCli(argv)
        if (!printedHelp(options.help, USAGE)) await runBench(options)
        return 0
    })
}

if (require.main === module) {
    void main(process.argv.slice(2)).then((code) => {
        process.exitCode = code
    })
}
