/**
 * Runs a plugin the way PostHog runs it, to measure what it delivers under each runtime:
 *
 * - `plugin-server` (vm2, 2021-2025): meta `{config, global, cache, storage, attachments, jobs,
 *   metrics, geoip}` shared by every call of a worker; node-fetch is the HTTP client; logs go
 *   through the sandbox console; `runEveryMinute` runs on a clock on one worker (PostHog ran
 *   scheduled tasks on the single server holding the schedule lock); a RetryError from onEvent
 *   is retried up to 5 attempts after 5, 10, 20, 40 s, unless `retries: false` (2024-2025).
 * - `cdp` (legacy plugin executor): meta `{config, global, logger, geoip, fetch}` (fetch as a
 *   plain-object adapter), `person` on the event, no cache, no storage, no schedule, no retries.
 *
 * Workers each load their own copy of the plugin (own sandbox, own `global`); in plugin-server
 * mode they share one cache, in memory or in Redis (`redisUrl` or `REDIS_URL`).
 */
import { RetryError } from '@posthog/plugin-scaffold'
import Redis from 'ioredis'
import { randomUUID } from 'node:crypto'
import { format } from 'node:util'

import {
    cdpFetch,
    ConsoleLike,
    EmulatorTarget,
    FetchFn,
    FetchInit,
    FetchResponse,
    hostNodeFetch,
    loadPlugin,
    PluginEventArg,
    PluginExports,
    PluginMeta,
    RedirectedCall,
    redirectingFetch,
    toHeaderRecord,
    consoleTo,
} from './load-plugin'

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

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
    /**
     * plugin-server HTTP client: `node-fetch` (2021-2023, honours `timeout`) or `undici` (2024-2025:
     * the standard fetch with its own 10 s timeout, `timeout` ignored).
     */
    httpClient?: 'node-fetch' | 'undici'
    /** Concurrent workers, each with its own plugin instance. Default 1. */
    workers?: number
    /** Events in flight per worker. Default 8. */
    concurrency?: number
    /** How events are spread over workers. Default round-robin. */
    distribute?: 'round-robin' | 'distinct_id'
    /** Length of a "minute" for runEveryMinute, in ms. Default 60000; 0 turns the clock off. */
    minuteMs?: number
    /** Which workers run runEveryMinute: PostHog ran it on one. Default 'one'. */
    scheduleOn?: 'one' | 'all'
    /** Factor applied to the 5/10/20/40 s retry delays (e.g. 0.01). Default 1. */
    delayScale?: number
    /** plugin-server only: false reproduces the 2024-2025 runtime, which never retries. Default true. */
    retries?: boolean
    /** Limit on each awaited hook call, like PostHog's 30 s task timeout. Default 30000. */
    taskTimeoutMs?: number
    /** Redis for the shared cache; defaults to the REDIS_URL environment variable, else in memory. */
    redisUrl?: string
    /** Prefix of cache keys; defaults to a fresh namespace per harness. */
    cacheNamespace?: string
    /** Pass `person` to onEvent. Default: true in cdp mode, false in plugin-server mode. */
    withPerson?: boolean
    /** Also give plugin-server meta a `logger` (PostHog did not). Default false. */
    metaLogger?: boolean
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

/**
 * 'delivered' | 'skipped' | 'queued' as onEvent reported them, 'done' when it resolved without a
 * status, 'failed' when it threw for good; any other status string the plugin reports is kept.
 */
export type OutcomeStatus = string

/** What happened to one event in the end. */
export interface EventRecord {
    uuid: string
    worker: number
    attempts: number
    status: OutcomeStatus
    /** The plugin's reason, or the error for 'failed'. */
    reason?: string
}

/** What runEveryMinute may resolve to; undefined means "nothing left". */
export interface MinuteReport {
    delivered?: number
    retried?: number
    dropped?: number
    remaining?: number
}

export interface MinuteSummary {
    runs: number
    delivered: number
    retried: number
    dropped: number
    /** Sum over scheduled workers of the last `remaining` each reported. */
    remaining: number
    failed: Record<string, number>
}

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

export interface DrainOptions {
    /** Give up after this many runEveryMinute rounds. Default 20. */
    maxRounds?: number
    /** Pause between rounds; defaults to the harness minute. */
    intervalMs?: number
}

export interface DrainResult {
    rounds: number
    /** True when the plugin reported an empty queue before the bound. */
    empty: boolean
    remaining: number
}

export interface Harness {
    readonly mode: HarnessMode
    readonly workers: number
    /** Processes events to their final outcome (retries included); resolves to the running summary. */
    run(events: Iterable<HarnessEvent>): Promise<HarnessSummary>
    /** Processes one event and returns its record. */
    send(event: HarnessEvent): Promise<EventRecord>
    /** Runs runEveryMinute once on the scheduled worker(s), outside the clock. */
    runMinute(): Promise<MinuteReport | undefined>
    /** Calls runEveryMinute until the plugin reports an empty queue or `maxRounds` is reached. */
    drain(options?: DrainOptions): Promise<DrainResult>
    summary(): HarnessSummary
    records(): readonly EventRecord[]
    /** Requests that reached the emulator, when the harness does the redirecting. */
    intercomCalls(): readonly RedirectedCall[]
    /** Stops the clock, calls teardownPlugin, closes Redis. */
    close(): Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Runtime constants
// ---------------------------------------------------------------------------------------------

/** PostHog's plugin server: 5 attempts, waiting 5, 10, 20, 40 s between them. */
export const MAX_ATTEMPTS = 5
export const RETRY_BASE_MS = 5000

export function retryDelayMs(failedAttempt: number, delayScale = 1): number {
    return 2 ** (failedAttempt - 1) * RETRY_BASE_MS * delayScale
}

/** The 2024-2025 plugin server's fetch: undici with a fixed 10 s timeout. */
export const UNDICI_TIMEOUT_MS = 10_000

/** PostHog's task timeout error: a RetryError, so the old runtime retried timeouts. */
export class TimeoutError extends RetryError {
    constructor(message: string) {
        super(message)
        this.name = 'TimeoutError'
    }
}

// ---------------------------------------------------------------------------------------------
// Cache: the plugin-server `meta.cache` API over a small Redis-like store
// ---------------------------------------------------------------------------------------------

/** The Redis commands PostHog's cache extension uses, on string values. */
export interface CacheStore {
    get(key: string): Promise<string | null>
    set(key: string, value: string, ttlSeconds?: number): Promise<void>
    incr(key: string): Promise<number>
    expire(key: string, ttlSeconds: number): Promise<boolean>
    lpush(key: string, values: string[]): Promise<number>
    lrange(key: string, start: number, stop: number): Promise<string[]>
    llen(key: string): Promise<number>
    lpop(key: string, count: number): Promise<string[] | null>
    lrem(key: string, count: number, value: string): Promise<number>
    /** Deletes every key that starts with the prefix. */
    clear(prefix: string): Promise<void>
    close(): Promise<void>
}

interface StoredValue {
    value: string | string[]
    expiresAt?: number
}

const WRONG_TYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'

/** Redis's LRANGE index rules: inclusive, negative counts from the end. */
function rangeBounds(length: number, start: number, stop: number): [number, number] {
    const from = Math.max(start < 0 ? length + start : start, 0)
    const to = Math.min(stop < 0 ? length + stop : stop, length - 1)
    return [from, to]
}

/** Removes `count` occurrences like LREM: from the head if positive, the tail if negative, all if 0. */
function removeOccurrences(list: string[], count: number, value: string): number {
    const limit = count === 0 ? Infinity : Math.abs(count)
    const indexes = list.map((item, index) => (item === value ? index : -1)).filter((index) => index >= 0)
    const chosen = (count < 0 ? indexes.reverse() : indexes).slice(0, limit)
    for (const index of [...chosen].sort((a, b) => b - a)) list.splice(index, 1)
    return chosen.length
}

/** An in-process stand-in for Redis with the same answers, TTLs checked on access. */
export function createMemoryStore(now: () => number = Date.now): CacheStore {
    const entries = new Map<string, StoredValue>()

    const live = (key: string): StoredValue | undefined => {
        const entry = entries.get(key)
        if (entry?.expiresAt !== undefined && entry.expiresAt <= now()) {
            entries.delete(key)
            return undefined
        }
        return entry
    }
    const stringAt = (key: string): string | null => {
        const entry = live(key)
        if (!entry) return null
        if (Array.isArray(entry.value)) throw new Error(WRONG_TYPE)
        return entry.value
    }
    const listAt = (key: string): string[] | undefined => {
        const entry = live(key)
        if (!entry) return undefined
        if (!Array.isArray(entry.value)) throw new Error(WRONG_TYPE)
        return entry.value
    }
    const dropIfEmpty = (key: string, list: string[]): void => {
        if (list.length === 0) entries.delete(key)
    }

    return {
        get: async (key) => stringAt(key),
        set: async (key, value, ttlSeconds) => {
            entries.set(key, { value, expiresAt: ttlSeconds ? now() + ttlSeconds * 1000 : undefined })
        },
        incr: async (key) => {
            const current = stringAt(key) ?? '0'
            if (!/^-?\d+$/.test(current)) throw new Error('ERR value is not an integer or out of range')
            const next = Number(current) + 1
            entries.set(key, { value: String(next), expiresAt: live(key)?.expiresAt })
            return next
        },
        expire: async (key, ttlSeconds) => {
            const entry = live(key)
            if (!entry) return false
            entry.expiresAt = now() + ttlSeconds * 1000
            return true
        },
        lpush: async (key, values) => {
            const list = listAt(key) ?? []
            list.unshift(...[...values].reverse())
            entries.set(key, { value: list, expiresAt: live(key)?.expiresAt })
            return list.length
        },
        lrange: async (key, start, stop) => {
            const list = listAt(key) ?? []
            const [from, to] = rangeBounds(list.length, start, stop)
            return from > to ? [] : list.slice(from, to + 1)
        },
        llen: async (key) => listAt(key)?.length ?? 0,
        lpop: async (key, count) => {
            const list = listAt(key)
            if (!list) return null
            const popped = list.splice(0, count)
            dropIfEmpty(key, list)
            return popped
        },
        lrem: async (key, count, value) => {
            const list = listAt(key)
            if (!list) return 0
            const removed = removeOccurrences(list, count, value)
            dropIfEmpty(key, list)
            return removed
        },
        clear: async (prefix) => {
            for (const key of [...entries.keys()]) if (key.startsWith(prefix)) entries.delete(key)
        },
        close: async () => undefined,
    }
}

/** The same store on a real Redis, so workers share it the way PostHog's servers did. */
export function createRedisStore(redisUrl: string): CacheStore {
    const client = new Redis(redisUrl, { maxRetriesPerRequest: 2 })
    return {
        get: (key) => client.get(key),
        set: async (key, value, ttlSeconds) => {
            if (ttlSeconds) await client.set(key, value, 'EX', ttlSeconds)
            else await client.set(key, value)
        },
        incr: (key) => client.incr(key),
        expire: async (key, ttlSeconds) => (await client.expire(key, ttlSeconds)) === 1,
        lpush: (key, values) => client.lpush(key, ...values),
        lrange: (key, start, stop) => client.lrange(key, start, stop),
        llen: (key) => client.llen(key),
        lpop: (key, count) => client.lpop(key, count),
        lrem: (key, count, value) => client.lrem(key, count, value),
        clear: async (prefix) => {
            let cursor = '0'
            do {
                const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
                if (keys.length > 0) await client.del(...keys)
                cursor = next
            } while (cursor !== '0')
        },
        close: async () => {
            await client.quit()
        },
    }
}

export interface CacheOptions {
    jsonSerialize?: boolean
}

/** The `meta.cache` object of PostHog's plugin server. */
export interface PluginCache {
    get(key: string, defaultValue: unknown, options?: CacheOptions): Promise<unknown>
    set(key: string, value: unknown, ttlSeconds?: number, options?: CacheOptions): Promise<void>
    incr(key: string): Promise<number>
    expire(key: string, ttlSeconds: number): Promise<boolean>
    lpush(key: string, elementOrArray: unknown): Promise<number>
    lrange(key: string, startIndex: number, endIndex: number): Promise<string[]>
    llen(key: string): Promise<number>
    lpop(key: string, count: number): Promise<string[] | null>
    lrem(key: string, count: number, elementKey: string): Promise<number>
}

function parseStored(value: string | null, jsonSerialize: boolean): unknown {
    if (!value) return null
    if (!jsonSerialize) return value
    try {
        return JSON.parse(value)
    } catch {
        return null
    }
}

function lpushValues(elementOrArray: unknown): string[] {
    if (typeof elementOrArray === 'string') return [elementOrArray]
    if (!Array.isArray(elementOrArray))
        throw new Error('cache.lpush expects a string value or an array of strings')
    if (elementOrArray.length > 1000)
        throw new Error('Too many elements in array for cache.lpush. Maximum: 1000')
    return elementOrArray.map((element) => String(element))
}

function requireNumber(value: unknown, message: string): void {
    if (typeof value !== 'number') throw new Error(message)
}

/**
 * PostHog's cache extension, answers included: a missing key reads as `null` whatever default is
 * given (the Redis client returns null, never undefined), values are JSON unless told otherwise,
 * list elements are raw strings, and LPOP of a missing list gives `null`.
 */
export function createPluginCache(store: CacheStore, namespace: string): PluginCache {
    const key = (name: string): string => `${namespace}${name}`
    return {
        get: async (name, _defaultValue, options = {}) =>
            parseStored(await store.get(key(name)), options.jsonSerialize ?? true),
        set: async (name, value, ttlSeconds, options = {}) => {
            const serialized = (options.jsonSerialize ?? true) ? JSON.stringify(value) : String(value)
            await store.set(key(name), serialized, ttlSeconds)
        },
        incr: (name) => store.incr(key(name)),
        expire: (name, ttlSeconds) => store.expire(key(name), ttlSeconds),
        lpush: async (name, elementOrArray) => store.lpush(key(name), lpushValues(elementOrArray)),
        lrange: async (name, startIndex, endIndex) => {
            requireNumber(startIndex, 'cache.lrange expects a number for the start and end indexes')
            requireNumber(endIndex, 'cache.lrange expects a number for the start and end indexes')
            return store.lrange(key(name), startIndex, endIndex)
        },
        llen: (name) => store.llen(key(name)),
        lpop: async (name, count) => {
            requireNumber(count, 'cache.lpop expects a number for the "count" argument')
            return store.lpop(key(name), count)
        },
        lrem: async (name, count, elementKey) => {
            requireNumber(count, 'cache.lrem expects a number for the "count" argument')
            return store.lrem(key(name), count, elementKey)
        },
    }
}

/** `meta.storage`: Postgres-backed in PostHog, a JSON-round-tripping map here. */
export interface PluginStorage {
    get(key: string, defaultValue: unknown): Promise<unknown>
    set(key: string, value: unknown): Promise<void>
    del(key: string): Promise<void>
}

export function createMemoryStorage(): PluginStorage {
    const values = new Map<string, string>()
    return {
        get: async (key, defaultValue) => {
            const stored = values.get(key)
            return stored === undefined ? defaultValue : JSON.parse(stored)
        },
        set: async (key, value) => {
            values.set(key, JSON.stringify(value))
        },
        del: async (key) => {
            values.delete(key)
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Small async helpers (host side: the harness may use timers, the plugin may not)
// ---------------------------------------------------------------------------------------------

/** Limits how many calls run at once on one worker. */
class Slots {
    private active = 0
    private readonly waiting: Array<() => void> = []

    constructor(private readonly limit: number) {}

    async run<T>(task: () => Promise<T>): Promise<T> {
        if (this.active < this.limit) this.active++
        // A freed slot is handed straight to the next waiter, so `active` never exceeds the limit.
        else await new Promise<void>((resolve) => this.waiting.push(resolve))
        try {
            return await task()
        } finally {
            const next = this.waiting.shift()
            if (next) next()
            else this.active--
        }
    }
}

/** Sleeps that close() can cut short, so nothing outlives the harness. */
class Sleeper {
    private readonly pending = new Map<NodeJS.Timeout, () => void>()

    sleep(ms: number): Promise<void> {
        return new Promise((resolve) => {
            const timer = setTimeout(() => {
                this.pending.delete(timer)
                resolve()
            }, ms)
            this.pending.set(timer, resolve)
        })
    }

    cancelAll(): void {
        for (const [timer, resolve] of this.pending) {
            clearTimeout(timer)
            resolve()
        }
        this.pending.clear()
    }
}

/** Runs a hook with PostHog's task timeout; sync throws become rejections. */
async function guarded<T>(name: string, timeoutMs: number, call: () => T): Promise<Awaited<T>> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
            () =>
                reject(
                    new TimeoutError(
                        `Script execution timed out after promise waited for ${timeoutMs} ms (${name})`
                    )
                ),
            timeoutMs
        )
    })
    try {
        return await Promise.race([Promise.resolve().then(call), timeout])
    } finally {
        clearTimeout(timer)
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

function increment(counts: Record<string, number>, key: string, by = 1): void {
    counts[key] = (counts[key] ?? 0) + by
}

function sum(values: number[]): number {
    return values.reduce((total, value) => total + value, 0)
}

function hashString(text: string): number {
    let hash = 0
    for (let i = 0; i < text.length; i++) hash = (hash * 31 + text.charCodeAt(i)) >>> 0
    return hash
}

// ---------------------------------------------------------------------------------------------
// Building what the plugin sees
// ---------------------------------------------------------------------------------------------

/** The 2024-2025 plugin server's node-fetch: the standard fetch with a fixed timeout. */
function undiciFetch(input: string | URL, init: FetchInit = {}): Promise<FetchResponse> {
    return fetch(String(input), {
        method: init.method,
        headers: toHeaderRecord(init.headers),
        body: init.body,
        redirect: init.redirect,
        signal: AbortSignal.timeout(UNDICI_TIMEOUT_MS),
    })
}

function baseFetch(options: HarnessOptions): FetchFn {
    if (options.fetch) return options.fetch
    if (options.mode === 'plugin-server' && options.httpClient === 'undici') return undiciFetch
    return hostNodeFetch
}

function refuseAll(): Promise<FetchResponse> {
    return Promise.reject(new Error('No emulatorUrl or fetch given to the harness: network refused'))
}

/** The event as each runtime hands it to onEvent. */
export function toPluginEvent(event: HarnessEvent, mode: HarnessMode, withPerson: boolean): PluginEventArg {
    const properties = structuredClone(event.properties ?? {})
    const teamId = event.team_id ?? 1
    const person =
        withPerson && event.person
            ? {
                  uuid: event.person.uuid ?? randomUUID(),
                  team_id: teamId,
                  properties: structuredClone(event.person.properties),
                  // The cdp executor no longer has the person's creation time; elsewhere the event's stands in.
                  created_at: mode === 'cdp' ? '' : event.timestamp,
              }
            : undefined
    return {
        distinct_id: event.distinct_id,
        ip: event.ip ?? (typeof properties.$ip === 'string' ? properties.$ip : null),
        team_id: teamId,
        event: event.event,
        properties,
        timestamp: event.timestamp,
        $set: properties.$set,
        $set_once: properties.$set_once,
        uuid: event.uuid,
        ...(person ? { person } : {}),
    }
}

interface Worker {
    index: number
    plugin: PluginExports
    /** plugin-server: the one meta object of the VM. cdp: meta without fetch, spread per call. */
    meta: PluginMeta
    slots: Slots
    /** Resolves when setupPlugin has finished; rejects with its failure. */
    ready: Promise<void>
}

type LogSink = (line: Omit<LogLine, 'worker'>, worker: number) => void

function captureConsole(worker: number, sink: LogSink): ConsoleLike {
    return consoleTo((level, args) => sink({ level, source: 'console', text: format(...args) }, worker))
}

/** The cdp executor's logger: debug, log, warn, error, and no `info`. */
function captureLogger(worker: number, sink: LogSink): Record<string, (...args: unknown[]) => void> {
    const write =
        (level: LogLevel) =>
        (...args: unknown[]) =>
            sink({ level, source: 'logger', text: format(...args) }, worker)
    return { debug: write('debug'), log: write('info'), warn: write('warn'), error: write('error') }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

type Tally = Omit<HarnessSummary, 'mode' | 'workers' | 'intercomHosts'>

function emptyTally(): Tally {
    return {
        events: 0,
        delivered: 0,
        done: 0,
        queued: 0,
        queuedByReason: {},
        skipped: {},
        statuses: {},
        retried: 0,
        failed: {},
        setupFailures: [],
        minute: { runs: 0, delivered: 0, retried: 0, dropped: 0, remaining: 0, failed: {} },
        logLevels: {},
        logs: [],
        logsDropped: 0,
    }
}

type AttemptResult = { kind: 'outcome'; value: unknown } | { kind: 'error'; error: unknown }

/** Reads `{status, reason}` from what onEvent resolved to; no status string counts as 'done'. */
function outcomeOf(value: unknown): { status: OutcomeStatus; reason?: string } {
    if (typeof value !== 'object' || value === null) return { status: 'done' }
    const { status, reason } = value as { status?: unknown; reason?: unknown }
    if (typeof status !== 'string' || status === 'failed') return { status: 'done' }
    return { status, reason: typeof reason === 'string' ? reason : undefined }
}

function minuteReportOf(value: unknown): MinuteReport | undefined {
    if (typeof value !== 'object' || value === null) return undefined
    const report = value as Record<string, unknown>
    const count = (name: string): number | undefined =>
        typeof report[name] === 'number' ? (report[name] as number) : undefined
    return {
        delivered: count('delivered'),
        retried: count('retried'),
        dropped: count('dropped'),
        remaining: count('remaining'),
    }
}

class PluginHarness implements Harness {
    readonly mode: HarnessMode
    readonly workers: number
    private readonly tally = emptyTally()
    /** What each scheduled worker last said was left in its queue. */
    private readonly lastRemaining = new Map<number, number>()
    private readonly eventRecords: EventRecord[] = []
    private readonly sleeper = new Sleeper()
    private readonly pool: Worker[] = []
    private readonly redirect?: ReturnType<typeof redirectingFetch>
    private readonly sandboxFetch: FetchFn
    private readonly store?: CacheStore
    /** Postgres-backed in PostHog, so shared by every worker like the cache. */
    private readonly storage = createMemoryStorage()
    private readonly namespace: string
    private clock?: NodeJS.Timeout
    private minuteInFlight?: Promise<MinuteReport | undefined>
    private nextWorker = 0
    private closed = false

    constructor(private readonly options: HarnessOptions) {
        this.mode = options.mode
        this.workers = Math.max(1, options.workers ?? 1)
        this.namespace = options.cacheNamespace ?? `@plugin/harness-${randomUUID()}/1/`
        if (options.emulatorUrl !== undefined) {
            this.redirect = redirectingFetch(options.emulatorUrl, baseFetch(options))
            this.sandboxFetch = this.redirect
        } else {
            this.sandboxFetch = options.fetch ?? refuseAll
        }
        if (this.mode === 'plugin-server') {
            const redisUrl = options.redisUrl ?? process.env.REDIS_URL
            this.store = redisUrl ? createRedisStore(redisUrl) : createMemoryStore()
        }
    }

    async start(): Promise<void> {
        await this.store?.clear(this.namespace)
        for (let index = 0; index < this.workers; index++) this.pool.push(this.createWorker(index))
        await Promise.all(this.pool.map((worker) => worker.ready.catch(() => undefined)))
        this.startClock()
    }

    // --- workers -------------------------------------------------------------------------------

    private readonly log: LogSink = (line, worker) => {
        const full = { ...line, worker }
        increment(this.tally.logLevels, line.level)
        if (this.tally.logs.length < (this.options.maxLogLines ?? 10_000)) this.tally.logs.push(full)
        else this.tally.logsDropped++
        this.options.onLog?.(full)
    }

    private createWorker(index: number): Worker {
        const plugin = loadPlugin({
            file: this.options.pluginFile,
            fetch: this.sandboxFetch,
            console: captureConsole(index, this.log),
        })
        const meta = this.store ? this.pluginServerMeta(index, this.store) : this.cdpMeta(index)
        const worker: Worker = {
            index,
            plugin,
            meta,
            slots: new Slots(this.options.concurrency ?? 8),
            ready: Promise.resolve(),
        }
        worker.ready = this.setUp(worker)
        // A failed setup is reported per event and in the summary, never as an unhandled rejection.
        worker.ready.catch((error: unknown) => this.tally.setupFailures.push(describeError(error)))
        return worker
    }

    private pluginServerMeta(index: number, store: CacheStore): PluginMeta {
        return {
            config: { ...this.options.config },
            global: {},
            attachments: {},
            cache: createPluginCache(store, this.namespace),
            storage: this.storage,
            geoip: { locate: async () => null },
            jobs: {},
            metrics: {},
            ...(this.options.metaLogger ? { logger: captureLogger(index, this.log) } : {}),
        }
    }

    private cdpMeta(index: number): PluginMeta {
        return {
            config: { ...this.options.config },
            global: {},
            logger: captureLogger(index, this.log),
            geoip: { locate: () => null },
        }
    }

    private cdpFetch(): ReturnType<typeof cdpFetch> {
        return cdpFetch(this.sandboxFetch)
    }

    /** plugin-server retried a setupPlugin RetryError like an event; cdp calls it once. */
    private async setUp(worker: Worker): Promise<void> {
        const { setupPlugin } = worker.plugin
        if (!setupPlugin) return
        const timeoutMs = this.options.taskTimeoutMs ?? 30_000
        if (this.mode === 'cdp') {
            const meta = { ...worker.meta, fetch: this.cdpFetch() }
            await guarded('setupPlugin', timeoutMs, () => setupPlugin(meta))
            return
        }
        for (let attempt = 1; ; attempt++) {
            try {
                await guarded('setupPlugin', timeoutMs, () => setupPlugin(worker.meta))
                return
            } catch (error) {
                if (!this.shouldRetry(error, attempt)) throw error
                await this.sleeper.sleep(retryDelayMs(attempt, this.options.delayScale))
            }
        }
    }

    private shouldRetry(error: unknown, attempt: number): boolean {
        const retrying = this.mode === 'plugin-server' && (this.options.retries ?? true)
        return retrying && error instanceof RetryError && attempt < MAX_ATTEMPTS && !this.closed
    }

    private pickWorker(event: HarnessEvent): Worker {
        if (this.options.distribute === 'distinct_id')
            return this.pool[hashString(event.distinct_id) % this.workers]
        const worker = this.pool[this.nextWorker % this.workers]
        this.nextWorker++
        return worker
    }

    // --- events --------------------------------------------------------------------------------

    private async attempt(worker: Worker, event: PluginEventArg, attempt: number): Promise<AttemptResult> {
        const { onEvent } = worker.plugin
        if (!onEvent) return { kind: 'outcome', value: undefined }
        try {
            await worker.ready
        } catch (error) {
            return { kind: 'error', error: new Error(`setup failed: ${describeError(error)}`) }
        }
        const meta = this.mode === 'cdp' ? { ...worker.meta, fetch: this.cdpFetch() } : worker.meta
        const timeoutMs = this.options.taskTimeoutMs ?? 30_000
        try {
            return { kind: 'outcome', value: await guarded('onEvent', timeoutMs, () => onEvent(event, meta)) }
        } catch (error) {
            if (error instanceof RetryError) {
                // The plugin server told the error which attempt it ended.
                error._attempt = attempt
                error._maxAttempts = MAX_ATTEMPTS
            }
            return { kind: 'error', error }
        }
    }

    /** One event to its final outcome; the worker's slot is held only while onEvent runs. */
    private async process(event: HarnessEvent): Promise<EventRecord> {
        this.tally.events++
        const worker = this.pickWorker(event)
        const withPerson = this.options.withPerson ?? this.mode === 'cdp'
        const pluginEvent = toPluginEvent(event, this.mode, withPerson)
        for (let attempt = 1; ; attempt++) {
            const result = await worker.slots.run(() => this.attempt(worker, pluginEvent, attempt))
            if (result.kind === 'error' && this.shouldRetry(result.error, attempt)) {
                this.tally.retried++
                await this.sleeper.sleep(retryDelayMs(attempt, this.options.delayScale))
                if (!this.closed) continue
                const closed = new Error('harness closed before the retry')
                return this.record(event.uuid, worker.index, attempt, { kind: 'error', error: closed })
            }
            return this.record(event.uuid, worker.index, attempt, result)
        }
    }

    private record(uuid: string, worker: number, attempts: number, result: AttemptResult): EventRecord {
        const outcome =
            result.kind === 'error'
                ? { status: 'failed', reason: describeError(result.error) }
                : outcomeOf(result.value)
        const record: EventRecord = { uuid, worker, attempts, ...outcome }
        this.eventRecords.push(record)
        this.count(record)
        return record
    }

    private count({ status, reason }: EventRecord): void {
        const tally = this.tally
        increment(tally.statuses, status)
        if (status === 'delivered') tally.delivered++
        else if (status === 'done') tally.done++
        else if (status === 'queued') {
            tally.queued++
            increment(tally.queuedByReason, reason ?? 'unspecified')
        } else if (status === 'skipped') increment(tally.skipped, reason ?? 'unspecified')
        else if (status === 'failed') increment(tally.failed, reason ?? 'unknown error')
    }

    async run(events: Iterable<HarnessEvent>): Promise<HarnessSummary> {
        await Promise.all(Array.from(events, (event) => this.process(event)))
        return this.summary()
    }

    send(event: HarnessEvent): Promise<EventRecord> {
        return this.process(event)
    }

    // --- runEveryMinute ------------------------------------------------------------------------

    private scheduledWorkers(): Worker[] {
        if (this.mode !== 'plugin-server') return []
        const withTask = this.pool.filter((worker) => typeof worker.plugin.runEveryMinute === 'function')
        return this.options.scheduleOn === 'all' ? withTask : withTask.slice(0, 1)
    }

    private startClock(): void {
        const minuteMs = this.options.minuteMs ?? 60_000
        if (minuteMs <= 0 || this.scheduledWorkers().length === 0) return
        this.clock = setInterval(() => {
            // PostHog did not start a scheduled task while the previous run was still going.
            if (!this.minuteInFlight) void this.runMinute()
        }, minuteMs)
        this.clock.unref()
    }

    private async minuteOn(worker: Worker): Promise<MinuteReport | undefined> {
        const task = worker.plugin.runEveryMinute
        if (!task) return undefined
        await worker.ready
        const timeoutMs = this.options.taskTimeoutMs ?? 30_000
        const report = minuteReportOf(await guarded('runEveryMinute', timeoutMs, () => task(worker.meta)))
        this.lastRemaining.set(worker.index, report?.remaining ?? 0)
        return report
    }

    private addMinuteReport(report: MinuteReport | undefined): void {
        const minute = this.tally.minute
        minute.delivered += report?.delivered ?? 0
        minute.retried += report?.retried ?? 0
        minute.dropped += report?.dropped ?? 0
        minute.remaining = sum([...this.lastRemaining.values()])
    }

    /** One scheduled round on each scheduled worker; undefined when no worker reported anything. */
    private async minuteRound(): Promise<MinuteReport | undefined> {
        const reports = await Promise.all(
            this.scheduledWorkers().map(async (worker) => {
                this.tally.minute.runs++
                try {
                    const report = await this.minuteOn(worker)
                    this.addMinuteReport(report)
                    return report
                } catch (error) {
                    increment(this.tally.minute.failed, describeError(error))
                    // A failed run leaves the queue as it was.
                    return { remaining: this.lastRemaining.get(worker.index) ?? 0 }
                }
            })
        )
        const defined = reports.filter((report): report is MinuteReport => report !== undefined)
        if (defined.length === 0) return undefined
        const total = (name: keyof MinuteReport): number => sum(defined.map((report) => report[name] ?? 0))
        return {
            delivered: total('delivered'),
            retried: total('retried'),
            dropped: total('dropped'),
            remaining: total('remaining'),
        }
    }

    runMinute(): Promise<MinuteReport | undefined> {
        const run = this.minuteRound().finally(() => {
            this.minuteInFlight = undefined
        })
        this.minuteInFlight = run
        return run
    }

    async drain(options: DrainOptions = {}): Promise<DrainResult> {
        const maxRounds = options.maxRounds ?? 20
        const intervalMs = options.intervalMs ?? this.options.minuteMs ?? 60_000
        let remaining = 0
        if (this.scheduledWorkers().length === 0) return { rounds: 0, empty: true, remaining }
        for (let round = 1; round <= maxRounds && !this.closed; round++) {
            if (this.minuteInFlight) await this.minuteInFlight
            const report = await this.runMinute()
            remaining = report?.remaining ?? 0
            if (remaining === 0) return { rounds: round, empty: true, remaining }
            await this.sleeper.sleep(intervalMs)
        }
        return { rounds: maxRounds, empty: false, remaining }
    }

    // --- results and shutdown ------------------------------------------------------------------

    summary(): HarnessSummary {
        const intercomHosts: Record<string, number> = {}
        for (const call of this.redirect?.calls ?? []) increment(intercomHosts, call.host)
        return structuredClone({ mode: this.mode, workers: this.workers, ...this.tally, intercomHosts })
    }

    records(): readonly EventRecord[] {
        return this.eventRecords
    }

    intercomCalls(): readonly RedirectedCall[] {
        return this.redirect?.calls ?? []
    }

    async close(): Promise<void> {
        if (this.closed) return
        this.closed = true
        clearInterval(this.clock)
        this.sleeper.cancelAll()
        await this.minuteInFlight?.catch(() => undefined)
        await Promise.all(this.pool.map((worker) => this.tearDown(worker)))
        await this.store?.clear(this.namespace)
        await this.store?.close()
    }

    private async tearDown(worker: Worker): Promise<void> {
        const { teardownPlugin } = worker.plugin
        if (this.mode !== 'plugin-server' || !teardownPlugin) return
        try {
            await guarded('teardownPlugin', this.options.taskTimeoutMs ?? 30_000, () =>
                teardownPlugin(worker.meta)
            )
        } catch (error) {
            this.log(
                { level: 'error', source: 'console', text: `teardownPlugin failed: ${describeError(error)}` },
                worker.index
            )
        }
    }
}

/** Loads the plugin on every worker and runs setupPlugin; the harness is ready for events. */
export async function createHarness(options: HarnessOptions): Promise<Harness> {
    const harness = new PluginHarness(options)
    try {
        await harness.start()
    } catch (error) {
        await harness.close()
        throw error
    }
    return harness
}
