/** Runs a plugin the way PostHog runs it, to measure what it delivers under each runtime:
 * - `plugin-server` (vm2, 2021-2025): one meta `{config, global, cache, storage, attachments, jobs, metrics,
 *   geoip}` per worker; node-fetch; logs through the sandbox console; `runEveryMinute` on a clock on one
 *   worker (PostHog's schedule lock); a RetryError from onEvent retried up to 5 attempts after 5, 10, 20,
 *   40 s, unless `retries: false` (2024-2025).
 * - `cdp` (legacy plugin executor): meta `{config, global, logger, geoip, fetch}` (a plain-object fetch),
 *   `person` on the event; no cache, storage, schedule or retries.
 * Each worker loads its own plugin (own sandbox and `global`); in plugin-server mode they share one cache.
 */
import { RetryError } from '@posthog/plugin-scaffold'
import { randomUUID } from 'node:crypto'
import { format } from 'node:util'

import { createMemoryStore, createPluginCache, createRedisStore, PluginCache } from './cache'
import { legacyLogger } from './cdp-executor'
import {
    cdpFetch,
    consoleTo,
    EmulatorTarget,
    FetchFn,
    hostNodeFetch,
    loadPlugin,
    PluginEventArg,
    PluginExports,
    PluginMeta,
    RedirectingFetch,
    redirectingFetch,
} from './load-plugin'
import { addCount } from '../lib/report'
import { Slots } from '../lib/slots'
import { createSleeper, withTimeout } from './sleeper'
import { maxRuns, retryDelayMs as policyDelayMs, VARIANTS } from './variants'

// The cache's store, for the fault campaign's cache audit.
export type { CacheStore } from './cache'
export { createMemoryStore, createPluginCache } from './cache'

export type HarnessMode = 'plugin-server' | 'cdp'

/** A PostHog event as exports and replays carry it. */
export interface HarnessEvent {
    uuid: string
    event: string
    distinct_id: string
    timestamp: string
    team_id?: number
    properties?: Record<string, unknown>
    person?: { uuid?: string; properties: Record<string, unknown> }
    ip?: string | null
}

export interface HarnessOptions {
    mode: HarnessMode
    /** Plugin config; every value a string, as PostHog stores it. */
    config: Record<string, string>
    /** Plugin file; defaults to the repository's index.ts. */
    pluginFile?: string
    /** Emulator the three Intercom hosts are redirected to (other hosts are refused). */
    emulatorUrl?: EmulatorTarget
    /** The HTTP client underneath the redirect; replaces the redirect when `emulatorUrl` is unset. */
    fetch?: FetchFn
    /** Concurrent workers, each with its own plugin instance. Default 1. */
    workers?: number
    /** Events in flight per worker. Default 8. */
    concurrency?: number
    /** How events are spread over workers. Default round-robin. */
    distribute?: 'round-robin' | 'distinct_id'
    /** Length of a "minute" for runEveryMinute, in ms. Default 60000; 0 turns the clock off. */
    minuteMs?: number
    /** Factor applied to the 5/10/20/40 s retry delays (e.g. 0.01). Default 1. */
    delayScale?: number
    /** plugin-server only: false reproduces the 2024-2025 runtime, which never retries. Default true. */
    retries?: boolean
    /** Limit on each awaited hook call, like PostHog's 30 s task timeout. Default 30000. */
    taskTimeoutMs?: number
    /** Redis for the shared cache; defaults to the REDIS_URL environment variable, else in memory. */
    redisUrl?: string
    /** Pass `person` to onEvent. Default: true in cdp mode, false in plugin-server mode. */
    withPerson?: boolean
    /** Log lines kept in the summary (the rest are only counted). Default 10000. */
    maxLogLines?: number
    /** Called for every log line as it happens. */
    onLog?: (line: LogLine) => void
}

export type LogLevel = 'debug' | 'log' | 'info' | 'warn' | 'error'

export interface LogLine {
    worker: number
    level: LogLevel
    /** `logger` for meta.logger, `console` for the sandbox console. */
    source: 'logger' | 'console'
    text: string
}

/** onEvent's reported status ('delivered', 'skipped', 'queued', …); 'done' without one; 'failed' if it threw. */
type OutcomeStatus = string

/** What happened to one event in the end. */
export interface EventRecord {
    uuid: string
    worker: number
    attempts: number
    status: OutcomeStatus
    /** The plugin's reason, or the error for 'failed'. */
    reason?: string
}

const MINUTE_COUNTS = ['delivered', 'retried', 'dropped', 'remaining'] as const

/** What runEveryMinute may resolve to; undefined means "nothing left". */
export type MinuteReport = Partial<Record<(typeof MINUTE_COUNTS)[number], number>>

/** runEveryMinute's runs, failures and summed counts; `remaining` is what the plugin last said. */
export type MinuteSummary = Required<MinuteReport> & { runs: number; failed: Record<string, number> }

export interface HarnessSummary {
    mode: HarnessMode
    workers: number
    events: number
    delivered: number
    /** onEvent resolved without an outcome object. */
    done: number
    queued: number
    queuedByReason: Record<string, number>
    skipped: Record<string, number>
    /** Every final status, including ones the harness has no field for (e.g. 'synced'). */
    statuses: Record<string, number>
    /** Attempts made again after a RetryError. */
    retried: number
    /** Final errors, keyed `Name: message`. */
    failed: Record<string, number>
    /** One message per worker whose setupPlugin failed. */
    setupFailures: string[]
    minute: MinuteSummary
    /** Requests let through to the emulator, by Intercom host. */
    intercomHosts: Record<string, number>
    logLevels: Record<string, number>
    logs: LogLine[]
    logsDropped: number
}

/** `maxRounds`: give up after this many runEveryMinute rounds (default 20); `intervalMs`: the pause between
 * rounds (default: the harness minute). */
export type DrainOptions = { maxRounds?: number; intervalMs?: number }

export interface DrainResult {
    rounds: number
    /** True when the plugin reported an empty queue before the bound. */
    empty: boolean
    remaining: number
}

/** The plugin server of 2022-23 (variant 2): 5 attempts, 5, 10, 20, 40 s apart. */
const RETRY = VARIANTS[2].retry
export const MAX_ATTEMPTS = maxRuns(RETRY)

export function retryDelayMs(failedAttempt: number, delayScale = 1): number {
    return policyDelayMs(RETRY, failedAttempt) * delayScale
}

/** PostHog's task timeout error: a RetryError, so the old runtime retried timeouts. */
class TimeoutError extends RetryError {
    name = 'TimeoutError'
}

/** Runs a hook with PostHog's task timeout; sync throws become rejections. */
function guarded(name: string, timeoutMs: number, call: () => unknown): Promise<unknown> {
    const message = `Script execution timed out after promise waited for ${timeoutMs} ms (${name})`
    return withTimeout(Promise.resolve().then(call), timeoutMs, () => new TimeoutError(message))
}

/** `meta.storage`: Postgres-backed in PostHog, a JSON-round-tripping map here. */
export function createMemoryStorage() {
    const values = new Map<string, string>()
    return {
        get: async (key: string, defaultValue: unknown): Promise<unknown> => {
            const stored = values.get(key)
            return stored === undefined ? defaultValue : JSON.parse(stored)
        },
        set: async (key: string, value: unknown) => void values.set(key, JSON.stringify(value)),
        del: async (key: string) => void values.delete(key),
    }
}

/** `Name: message` for any thrown value, including errors from the sandbox's realm. */
export function describeError(error: unknown): string {
    if (typeof error === 'object' && error !== null && 'message' in error) {
        const { name, message } = error as { name?: unknown; message?: unknown }
        return `${typeof name === 'string' ? name : 'Error'}: ${String(message)}`
    }
    return String(error)
}

/** The event as each runtime hands it to onEvent. */
export function toPluginEvent(event: HarnessEvent, mode: HarnessMode, withPerson: boolean): PluginEventArg {
    const properties = structuredClone(event.properties ?? {})
    const teamId = event.team_id ?? 1
    const pluginEvent: PluginEventArg = {
        distinct_id: event.distinct_id,
        ip: event.ip ?? (typeof properties.$ip === 'string' ? properties.$ip : null),
        team_id: teamId,
        event: event.event,
        properties,
        timestamp: event.timestamp,
        $set: properties.$set,
        $set_once: properties.$set_once,
        uuid: event.uuid,
    }
    if (withPerson && event.person)
        pluginEvent.person = {
            uuid: event.person.uuid ?? randomUUID(),
            team_id: teamId,
            properties: structuredClone(event.person.properties),
            // The cdp executor no longer has the person's creation time; elsewhere the event's stands in.
            created_at: mode === 'cdp' ? '' : event.timestamp,
        }
    return pluginEvent
}

/** What `node-fetch` gives the plugin: the emulator redirect over the chosen client, or the caller's fetch. */
function sandboxFetchOf(options: HarnessOptions): { fetch: FetchFn; redirect?: RedirectingFetch } {
    const underlying = options.fetch ?? hostNodeFetch
    if (options.emulatorUrl !== undefined) {
        const redirect = redirectingFetch(options.emulatorUrl, underlying)
        return { fetch: redirect, redirect }
    }
    const refuse = () =>
        Promise.reject(new Error('No emulatorUrl or fetch given to the harness: network refused'))
    return { fetch: options.fetch ?? refuse }
}

type Tally = Omit<HarnessSummary, 'mode' | 'workers' | 'intercomHosts'>

function countOutcome(tally: Tally, { status, reason }: EventRecord): void {
    addCount(tally.statuses, status)
    if (status === 'delivered') tally.delivered++
    else if (status === 'done') tally.done++
    else if (status === 'queued') {
        tally.queued++
        addCount(tally.queuedByReason, reason ?? 'unspecified')
    } else if (status === 'skipped') addCount(tally.skipped, reason ?? 'unspecified')
    else if (status === 'failed') addCount(tally.failed, reason ?? 'unknown error')
}

/** Reads `{status, reason}` from what onEvent resolved to; no status string counts as 'done'. */
function outcomeOf(value: unknown): { status: OutcomeStatus; reason?: string } {
    if (typeof value !== 'object' || value === null) return { status: 'done' }
    const { status, reason } = value as { status?: unknown; reason?: unknown }
    if (typeof status !== 'string' || status === 'failed') return { status: 'done' }
    return { status, reason: typeof reason === 'string' ? reason : undefined }
}

/** The counts runEveryMinute resolved to (0 where it gave none), if it resolved to an object. */
function minuteReportOf(value: unknown): MinuteReport | undefined {
    if (typeof value !== 'object' || value === null) return undefined
    const report = value as Record<string, unknown>
    const count = (name: string) => (typeof report[name] === 'number' ? (report[name] as number) : 0)
    return Object.fromEntries(MINUTE_COUNTS.map((name) => [name, count(name)]))
}

/** What the harness's parts (workers, the event path, the minute schedule) share. */
interface Run {
    options: HarnessOptions
    mode: HarnessMode
    timeoutMs: number
    tally: Tally
    sleeper: ReturnType<typeof createSleeper>
    closed: boolean
    log(line: Omit<LogLine, 'worker'>, worker: number): void
    /** What every worker shares: the sandbox's fetch, the cache and `meta.storage`. */
    fetch: FetchFn
    cache?: PluginCache
    storage: object
}

/** A RetryError the runtime tries again: plugin-server with retries on, attempts left, harness open. */
function retries(run: Run, error: unknown, attempt: number): boolean {
    const retrying = run.mode === 'plugin-server' && (run.options.retries ?? true)
    return retrying && error instanceof RetryError && attempt < MAX_ATTEMPTS && !run.closed
}

/** A worker: its own plugin instance and meta, its slots, and `ready` once setupPlugin is done (or failed). */
function startWorker(run: Run, index: number) {
    const logTo = (source: LogLine['source']) => (level: LogLevel, args: unknown[]) =>
        run.log({ level, source, text: format(...args) }, index)
    const plugin = loadPlugin({
        file: run.options.pluginFile,
        fetch: run.fetch,
        console: consoleTo(logTo('console')),
    })
    const config = { ...run.options.config }
    const logger = legacyLogger(logTo('logger'))
    // plugin-server: the one meta object of the VM. cdp: copied for each call, as the executor did.
    const meta: PluginMeta =
        run.mode === 'cdp'
            ? { config, global: {}, logger, geoip: { locate: () => null }, fetch: cdpFetch(run.fetch) }
            : {
                  config,
                  global: {},
                  attachments: {},
                  cache: run.cache,
                  storage: run.storage,
                  geoip: { locate: async () => null },
                  jobs: {},
                  metrics: {},
              }
    const ready = setUp(run, plugin, meta)
    // A failed setup is reported per event and in the summary, never as an unhandled rejection.
    ready.catch((error: unknown) => run.tally.setupFailures.push(describeError(error)))
    return { index, plugin, meta, ready, slots: new Slots(run.options.concurrency ?? 8) }
}

type Worker = ReturnType<typeof startWorker>

/** plugin-server retried a setupPlugin RetryError like an event; cdp calls it once. */
async function setUp(run: Run, plugin: PluginExports, meta: PluginMeta): Promise<void> {
    const { setupPlugin } = plugin
    if (!setupPlugin) return
    for (let attempt = 1; ; attempt++) {
        try {
            await guarded('setupPlugin', run.timeoutMs, () => setupPlugin(callMeta(run, meta)))
            return
        } catch (error) {
            if (!retries(run, error, attempt)) throw error
            await run.sleeper.sleep(retryDelayMs(attempt, run.options.delayScale))
        }
    }
}

function callMeta(run: Run, meta: PluginMeta): PluginMeta {
    return run.mode === 'cdp' ? { ...meta } : meta
}

async function tearDown(run: Run, worker: Worker): Promise<void> {
    const { teardownPlugin } = worker.plugin
    if (run.mode !== 'plugin-server' || !teardownPlugin) return
    try {
        await guarded('teardownPlugin', run.timeoutMs, () => teardownPlugin(worker.meta))
    } catch (error) {
        const text = `teardownPlugin failed: ${describeError(error)}`
        run.log({ level: 'error', source: 'console', text }, worker.index)
    }
}

/** One call of onEvent once the worker is set up; rejects with the call's error. */
async function attempt(run: Run, worker: Worker, event: PluginEventArg, n: number): Promise<unknown> {
    const { onEvent } = worker.plugin
    if (!onEvent) return undefined
    await worker.ready.catch((error: unknown) => {
        throw new Error(`setup failed: ${describeError(error)}`)
    })
    const meta = callMeta(run, worker.meta)
    try {
        return await guarded('onEvent', run.timeoutMs, () => onEvent(event, meta))
    } catch (error) {
        if (error instanceof RetryError) {
            // The plugin server told the error which attempt it ended.
            error._attempt = n
            error._maxAttempts = MAX_ATTEMPTS
        }
        throw error
    }
}

const failure = (error: unknown) => ({ status: 'failed', reason: describeError(error) })

/** The event path: each event to its final outcome, the worker's slot held only while onEvent runs. */
function eventPath(
    run: Run,
    pool: Worker[],
    records: EventRecord[]
): (event: HarnessEvent) => Promise<EventRecord> {
    let next = 0
    const pick = (event: HarnessEvent): Worker => {
        if (run.options.distribute !== 'distinct_id') return pool[next++ % pool.length]
        let hash = 0
        for (let i = 0; i < event.distinct_id.length; i++)
            hash = (hash * 31 + event.distinct_id.charCodeAt(i)) >>> 0
        return pool[hash % pool.length]
    }
    return async (event) => {
        run.tally.events++
        const worker = pick(event)
        const pluginEvent = toPluginEvent(event, run.mode, run.options.withPerson ?? run.mode === 'cdp')
        const record = (attempts: number, outcome: Pick<EventRecord, 'status' | 'reason'>): EventRecord => {
            const done: EventRecord = { uuid: event.uuid, worker: worker.index, attempts, ...outcome }
            records.push(done)
            countOutcome(run.tally, done)
            return done
        }
        for (let n = 1; ; n++) {
            try {
                return record(
                    n,
                    outcomeOf(await worker.slots.run(() => attempt(run, worker, pluginEvent, n)))
                )
            } catch (error) {
                if (!retries(run, error, n)) return record(n, failure(error))
            }
            run.tally.retried++
            await run.sleeper.sleep(retryDelayMs(n, run.options.delayScale))
            if (run.closed) return record(n, failure(new Error('harness closed before the retry')))
        }
    }
}

/** The minute schedule: runEveryMinute on a clock, by hand, or until the queue drains. */
function minuteSchedule(run: Run, pool: Worker[]) {
    const minute = run.tally.minute
    let inFlight: Promise<MinuteReport | undefined> | undefined
    let clock: NodeJS.Timeout | undefined
    const minuteMs = run.options.minuteMs ?? 60_000

    /** PostHog ran scheduled tasks on the one server holding the schedule lock: here the first worker. */
    const scheduled = (): Worker | undefined =>
        run.mode === 'plugin-server'
            ? pool.find((worker) => typeof worker.plugin.runEveryMinute === 'function')
            : undefined
    /** One run on the scheduled worker; undefined when it reported nothing. */
    const round = async (): Promise<MinuteReport | undefined> => {
        const worker = scheduled()
        if (!worker) return undefined
        minute.runs++
        try {
            await worker.ready
            const value = await guarded('runEveryMinute', run.timeoutMs, () =>
                worker.plugin.runEveryMinute?.(worker.meta)
            )
            const report = minuteReportOf(value)
            for (const name of ['delivered', 'retried', 'dropped'] as const)
                minute[name] += report?.[name] ?? 0
            minute.remaining = report?.remaining ?? 0
            return report
        } catch (error) {
            addCount(minute.failed, describeError(error))
            // A failed run leaves the queue as it was.
            return { delivered: 0, retried: 0, dropped: 0, remaining: minute.remaining }
        }
    }
    const runMinute = (): Promise<MinuteReport | undefined> => {
        inFlight = round().finally(() => (inFlight = undefined))
        return inFlight
    }
    return {
        runMinute,
        start(): void {
            if (minuteMs <= 0 || !scheduled()) return
            // PostHog did not start a scheduled task while the previous run was still going.
            clock = setInterval(() => {
                if (!inFlight) void runMinute()
            }, minuteMs)
            clock.unref()
        },
        async drain(options: DrainOptions = {}): Promise<DrainResult> {
            const maxRounds = options.maxRounds ?? 20
            let remaining = 0
            if (!scheduled()) return { rounds: 0, empty: true, remaining }
            for (let rounds = 1; rounds <= maxRounds && !run.closed; rounds++) {
                await inFlight
                remaining = (await runMinute())?.remaining ?? 0
                if (remaining === 0) return { rounds, empty: true, remaining }
                await run.sleeper.sleep(options.intervalMs ?? minuteMs)
            }
            return { rounds: maxRounds, empty: false, remaining }
        },
        async stop(): Promise<void> {
            clearInterval(clock)
            await inFlight?.catch(() => undefined)
        },
    }
}

/** Loads the plugin on every worker and runs setupPlugin; the harness is ready for events. */
export async function createHarness(options: HarnessOptions) {
    const mode = options.mode
    const workers = Math.max(1, options.workers ?? 1)
    const namespace = `@plugin/harness-${randomUUID()}/1/`
    const redisUrl = options.redisUrl ?? process.env.REDIS_URL
    const store =
        mode === 'plugin-server' ? (redisUrl ? createRedisStore(redisUrl) : createMemoryStore()) : undefined
    const { fetch, redirect } = sandboxFetchOf(options)
    const counts = { events: 0, delivered: 0, done: 0, queued: 0, retried: 0, logsDropped: 0 }
    const tables = { queuedByReason: {}, skipped: {}, statuses: {}, failed: {}, logLevels: {} }
    const minute = { runs: 0, delivered: 0, retried: 0, dropped: 0, remaining: 0, failed: {} }
    const tally: Tally = { ...counts, ...tables, minute, setupFailures: [], logs: [] }
    const run: Run = {
        options,
        mode,
        timeoutMs: options.taskTimeoutMs ?? 30_000,
        tally,
        sleeper: createSleeper(),
        closed: false,
        fetch,
        cache: store && createPluginCache(store, namespace),
        // Postgres-backed in PostHog, so shared by every worker like the cache.
        storage: createMemoryStorage(),
        log(line, worker) {
            const full = { ...line, worker }
            addCount(tally.logLevels, line.level)
            if (tally.logs.length < (options.maxLogLines ?? 10_000)) tally.logs.push(full)
            else tally.logsDropped++
            options.onLog?.(full)
        },
    }
    const pool: Worker[] = []
    const records: EventRecord[] = []
    const processEvent = eventPath(run, pool, records)
    const schedule = minuteSchedule(run, pool)
    const summary = (): HarnessSummary => {
        const intercomHosts: Record<string, number> = {}
        for (const call of redirect?.calls ?? []) addCount(intercomHosts, call.host)
        return structuredClone({ mode, workers, ...tally, intercomHosts })
    }
    const harness = {
        mode,
        workers,
        /** Processes events to their final outcome (retries included); resolves to the running summary. */
        run: async (events: Iterable<HarnessEvent>): Promise<HarnessSummary> => {
            await Promise.all(Array.from(events, processEvent))
            return summary()
        },
        /** Processes one event and returns its record. */
        send: processEvent,
        /** Runs runEveryMinute once on the scheduled worker, outside the clock. */
        runMinute: schedule.runMinute,
        /** Calls runEveryMinute until the plugin reports an empty queue or `maxRounds` is reached. */
        drain: schedule.drain,
        summary,
        records: (): readonly EventRecord[] => records,
        /** Stops the clock, calls teardownPlugin, closes Redis. */
        async close(): Promise<void> {
            if (run.closed) return
            run.closed = true
            run.sleeper.cancelAll()
            await schedule.stop()
            await Promise.all(pool.map((worker) => tearDown(run, worker)))
            await store?.clear(namespace)
            await store?.close()
        },
    }
    try {
        await store?.clear(namespace)
        for (let index = 0; index < workers; index++) pool.push(startWorker(run, index))
        await Promise.all(pool.map((worker) => worker.ready.catch(() => undefined)))
        schedule.start()
    } catch (error) {
        await harness.close()
        throw error
    }
    return harness
}

export type Harness = Awaited<ReturnType<typeof createHarness>>
