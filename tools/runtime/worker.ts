/** One PostHog runtime in a process of its own, so tests and the fault campaign can `kill -9` it mid-run.
 * Reads events (JSON Lines) from a file or stdin, sends each through the variant's onEvent, then calls
 * runEveryMinute (where the variant has it) until the plugin reports nothing left. Writes one JSON line
 * per result on stdout: counts and statuses only, never event contents.
 */
import { ChildProcess, spawn } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'

import { BACKLOG_CONFIG } from './backlog'
import { RedisMode } from './cache'
import { RuntimeEvent, startVariant, Treatment } from './start-variant'
import { isVariantId } from './variants'

export const WORKER_USAGE = `Usage: tsx tools/runtime/worker.ts --variant <1-6> [options]
  --emulator URL        Intercom emulator the three Intercom hosts are sent to (required)
  --redis URL           Redis for meta.cache (variants 1-4)
  --redis-mode MODE     redis-7 (default) or redis-6.0 (LPOP with a count refused)
  --events FILE         JSON Lines of events; '-' or absent: stdin
  --config JSON         plugin config (default: test-token, triggering event signed_up)
  --minutes N           runEveryMinute calls at most, after the events (default 0)
  --concurrency N       events in flight (default 1)
  --delay-scale F       factor on the runtime's retry delays (default 1)
  --plugin-id N         cache key namespace (default 1)`

/** The flags WORKER_USAGE lists. */
const KNOWN_FLAGS = [
    'variant',
    'emulator',
    'redis',
    'redis-mode',
    'events',
    'config',
    'minutes',
    'concurrency',
    'delay-scale',
    'plugin-id',
]

/** Parses the command line; throws with a message for anything unknown or malformed. */
export function parseWorkerArgs(argv: readonly string[]) {
    const flags = new Map<string, string>()
    for (let i = 0; i < argv.length; i += 2) {
        const [name, value] = [argv[i], argv[i + 1]]
        if (!name.startsWith('--') || value === undefined) throw new Error(`Unexpected argument '${name}'`)
        flags.set(name.slice(2), value)
    }
    const unknown = [...flags.keys()].find((name) => !KNOWN_FLAGS.includes(name))
    if (unknown) throw new Error(`Unknown flag --${unknown}`)
    const variant = Number(flags.get('variant'))
    if (!isVariantId(variant)) throw new Error('--variant must be 1 to 6')
    const emulator = flags.get('emulator')
    if (!emulator) throw new Error('--emulator is required')
    const redisMode = (flags.get('redis-mode') ?? 'redis-7') as RedisMode
    if (redisMode !== 'redis-7' && redisMode !== 'redis-6.0')
        throw new Error('--redis-mode is redis-7 or redis-6.0')
    const number = (name: string, fallback: number, min: number): number => {
        const parsed = Number(flags.get(name) ?? fallback)
        if (!Number.isFinite(parsed) || parsed < min) throw new Error(`--${name} needs a number >= ${min}`)
        return parsed
    }
    return {
        variant,
        emulator,
        redis: flags.get('redis'),
        redisMode,
        events: flags.get('events') ?? '-',
        config: flags.has('config')
            ? (JSON.parse(flags.get('config')!) as Record<string, string>)
            : BACKLOG_CONFIG,
        minutes: number('minutes', 0, 0),
        concurrency: number('concurrency', 1, 1),
        delayScale: number('delay-scale', 1, 0),
        pluginId: number('plugin-id', 1, 1),
    }
}

export type WorkerArgs = ReturnType<typeof parseWorkerArgs>

/** Starts the worker as a child process (one process: `node --import tsx`, so `kill -9` really kills it). */
export function spawnWorker(args: readonly string[]): ChildProcess {
    return spawn(process.execPath, ['--import', 'tsx', __filename, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
    })
}

const emit = (line: object): void => void process.stdout.write(`${JSON.stringify(line)}\n`)

/** The status the plugin reported, if any (index.ts resolves onEvent to `{status, reason}`). */
function reported(treatment: Treatment): string | undefined {
    const value = treatment.value as { status?: unknown } | undefined
    return typeof value?.status === 'string' ? value.status : undefined
}

async function* readEvents(source: string): AsyncGenerator<RuntimeEvent> {
    const input = source === '-' ? process.stdin : createReadStream(source)
    for await (const line of createInterface({ input, crlfDelay: Infinity })) {
        if (line.trim()) yield JSON.parse(line) as RuntimeEvent
    }
}

export async function runWorker(args: WorkerArgs): Promise<void> {
    const runtime = await startVariant(args.variant, {
        config: args.config,
        emulatorUrl: args.emulator,
        redisUrl: args.redis,
        redisMode: args.redisMode,
        delayScale: args.delayScale,
        pluginId: args.pluginId,
    })
    emit({ kind: 'ready', variant: args.variant, setupError: runtime.setupError })
    const inFlight = new Set<Promise<void>>()
    for await (const event of readEvents(args.events)) {
        const task = runtime.onEvent(event).then((treatment) => {
            const { status, runs, error } = treatment
            emit({ kind: 'event', uuid: event.uuid, status, runs, reported: reported(treatment), error })
        })
        inFlight.add(task)
        void task.finally(() => inFlight.delete(task))
        if (inFlight.size >= args.concurrency) await Promise.race(inFlight)
    }
    await Promise.all(inFlight)
    for (let minute = 0; runtime.runEveryMinute && minute < args.minutes; minute++) {
        const treatment = await runtime.runEveryMinute()
        emit({ kind: 'minute', status: treatment.status, value: treatment.value, error: treatment.error })
        // Done once the plugin says nothing is left (or says nothing about it).
        const remaining = (treatment.value as { remaining?: unknown } | undefined)?.remaining
        if (treatment.status === 'ok' && (typeof remaining !== 'number' || remaining === 0)) break
    }
    await runtime.teardown()
    emit({ kind: 'done' })
}

if (require.main === module) {
    const argv = process.argv.slice(2)
    if (argv.includes('--help')) {
        console.log(WORKER_USAGE)
        process.exit(0)
    }
    let args: WorkerArgs
    try {
        args = parseWorkerArgs(argv)
    } catch (error) {
        console.error(`${(error as Error).message}\n\n${WORKER_USAGE}`)
        process.exit(2)
    }
    runWorker(args).then(
        () => process.exit(0),
        (error) => {
            console.error(`worker failed: ${(error as Error).message}`)
            process.exit(1)
        }
    )
}
