/**
 * `npm run bench`: what the plugin costs Intercom and the host, against the local emulator.
 *
 *   npm run bench                                  # 10,000 events from 500 people, every scenario (~8 min)
 *   npm run bench -- --quick                       # 1,000 events from 100 people, three scenarios (< 1 min)
 *   npm run bench -- --scenarios replay            # the replay's use of Intercom's rate limit
 *   npm run bench -- --scenarios plugin-server,no-cache --minute-ms 60000 --out /tmp/bench.json
 *
 * Scenarios, each against a fresh emulator at its default rate limit (1,666 calls per 10 s window, real time):
 * - `plugin-server`: index.ts in the plugin-server harness, N workers sharing one cache, events fed as fast as
 *   the workers take them; what Intercom refuses waits in the plugin's retry queue, drained by runEveryMinute.
 * - `cdp`: index.ts in PostHog's current executor (no cache, no runEveryMinute, no retries), same burst.
 * - `cdp-paced`: the same runtime, events fed at a steady rate below the limit.
 * - `no-cache`: a reference client in this file making the old plugin's two calls per event (search the email,
 *   POST the event by id) with the same rate-limit waiting as the plugin: only the cache differs.
 * - `replay`: the workload as an export file through `npm run replay` (tools/replay) to the "real" Intercom
 *   redirected to the emulator: how much of each rate-limit window a backfill uses.
 * - `cpu`: the plugin's own CPU per event: index.ts minus a plugin that only POSTs, over HTTP to the emulator
 *   (rate limit lifted) and against an in-process stub.
 *
 * The emulator runs in a child process (this file, with --emulator-child), so the host process's CPU is the
 * plugin's (plus node-fetch and the harness) and the emulator's CPU is measured apart.
 */
import { seededRandom } from '../lib/random'
import { Presets, SingleBar } from 'cli-progress'
import { ChildProcess, fork } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import fetch from 'node-fetch'

import { Emulator, EmulatorOptions, EmulatorStats, SeedContact, startEmulator } from '../intercom/emulator'
import { createHarness, Harness, HarnessEvent, HarnessMode, HarnessSummary } from '../runtime/harness'
import { choiceFlag, numberFlag, parseFlags, printedHelp, runCli, UsageError } from '../lib/flags'
import { FetchFn, FetchResponse, hostNodeFetch, redirectingFetch } from '../runtime/load-plugin'
import { replay } from '../replay'
import { formatCount, formatPercent, formatRatio, formatTable, heading } from '../lib/report'

// ---------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------

export const SCENARIOS = ['plugin-server', 'cdp', 'cdp-paced', 'no-cache', 'replay', 'cpu'] as const
export type ScenarioName = (typeof SCENARIOS)[number]

export interface BenchOptions {
    events: number
    people: number
    /** Workers of each harness run (and, times `concurrency`, the reference client's parallel requests). */
    workers: number
    /** Events in flight per worker: the harness default. */
    concurrency: number
    /** How harness runs spread events over workers: PostHog's plugin server did not keep a person on one. */
    distribute: 'round-robin' | 'distinct_id'
    /** How often the plugin-server harness runs runEveryMinute. PostHog: 60,000. */
    minuteMs: number
    /** Events per second fed in `cdp-paced`. */
    pacedRate: number
    scenarios: ScenarioName[]
    /** JSON results file; null writes none. */
    out: string | null
    /** `child` keeps the emulator's CPU out of the host's measurement; `in-process` is for tests. */
    emulator: 'child' | 'in-process'
    /** Passes of the `cpu` scenario whose median is reported (one more warms up). */
    cpuPasses: number
    /** Progress bars on stderr (only drawn on a terminal). */
    progress: boolean
    seed: number
    print: (line: string) => void
}

export const DEFAULT_OPTIONS: BenchOptions = {
    events: 10_000,
    people: 500,
    workers: 4,
    concurrency: 8,
    // PostHog's ingestion partitions events by distinct_id, so one person's events meet one worker.
    distribute: 'distinct_id',
    minuteMs: 10_000,
    // 100/s averages 1,200 calls a window, but each cdp worker's first lookups of 500 people pushed one window
    // to 1,653 calls (measured): 80/s stays clear of the limit while the caches fill.
    pacedRate: 80,
    scenarios: [...SCENARIOS],
    out: path.resolve(__dirname, '..', '..', 'bench-results.json'),
    emulator: 'child',
    cpuPasses: 3,
    progress: true,
    seed: 42,
    print: (line) => console.log(line),
}

const TOKEN = 'bench-token'
const SETUP_ROUTE = 'GET /me'
const SEARCH_ROUTE = 'POST /contacts/search'
const EMULATOR_CHILD_FLAG = '--emulator-child'

// ---------------------------------------------------------------------------------------------------
// Workload: N events from P people, interleaved, each one a triggering event of a known contact
// ---------------------------------------------------------------------------------------------------

const EVENT_NAMES = ['signed_in', 'report_viewed', 'invite_sent', 'plan_upgraded', 'purchase_completed']
const PLANS = ['free', 'team', 'business']

export const BENCH_CONFIG: Record<string, string> = {
    intercomApiKey: TOKEN,
    region: 'US',
    triggeringEvents: EVENT_NAMES.join(','),
    metadataProperties: 'plan,seats,revenue,$current_url:url',
    eventNameMapping: 'purchase_completed:purchased',
}

export interface Workload {
    events: HarnessEvent[]
    contacts: SeedContact[]
}

function shuffle<T>(items: T[], random: () => number): T[] {
    for (let i = items.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[items[i], items[j]] = [items[j], items[i]]
    }
    return items
}

function personEmail(person: number): string {
    return `person${person}@customer${person % 50}.example`
}

function eventProperties(person: number, name: string, random: () => number): Record<string, unknown> {
    const properties: Record<string, unknown> = {
        email: personEmail(person),
        plan: PLANS[person % PLANS.length],
        $current_url: `https://app.example.com/${name.replace(/_/g, '-')}`,
        $lib: 'web',
    }
    if (name === 'invite_sent') properties.seats = 1 + Math.floor(random() * 20)
    if (name === 'purchase_completed') {
        properties.revenue = Math.round(random() * 50_000) / 100
        properties.currency = 'EUR'
    }
    return properties
}

/**
 * People take turns at random (a seeded shuffle); timestamps are one second apart in feed order, so every
 * event has its own created_at and Intercom's deduplication can only merge true retries.
 */
export function buildWorkload(events: number, people: number, seed: number): Workload {
    const random = seededRandom(seed)
    const owners = shuffle(
        Array.from({ length: events }, (_, i) => i % people),
        random
    )
    const start = Date.now() - events * 1000
    return {
        contacts: Array.from({ length: people }, (_, person) => ({
            email: personEmail(person),
            // Every tenth person is a lead: their events only land when posted by contact id.
            role: person % 10 === 9 ? 'lead' : 'user',
            external_id: person % 10 === 9 ? undefined : `user_${person}`,
        })),
        events: owners.map((person, i) => {
            const name = EVENT_NAMES[Math.floor(random() * EVENT_NAMES.length)]
            return {
                uuid: `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`,
                event: name,
                distinct_id: `user_${person}`,
                timestamp: new Date(start + i * 1000).toISOString(),
                properties: eventProperties(person, name, random),
            }
        }),
    }
}

// ---------------------------------------------------------------------------------------------------
// The emulator, in a child process (or in-process for tests), and what it recorded
// ---------------------------------------------------------------------------------------------------

export interface EmulatorSnapshot {
    stats: EmulatorStats
    /** Events stored, deduplicated like Intercom. */
    stored: number
    /** Calls by route, then by the status answered. */
    calls: Record<string, Record<string, number>>
    /** Distinct emails among the searches answered 200. */
    searchedEmails: number
    /** For each repeated successful search of an email: ms since the previous search of that email. */
    repeatGapsMs: number[]
    /** Calls in each 10 s rate-limit window (aligned on the clock, as the emulator counts), from `since`. */
    callsPerWindow: number[]
    /** CPU of the emulator's process since it started (µs); null when it shares the host process. */
    cpuMicros: number | null
}

interface EmulatorHandle {
    url: string
    /** What the emulator recorded; windows are counted from `since` (ms). */
    snapshot(since?: number): Promise<EmulatorSnapshot>
    close(): Promise<void>
}

/** `/contacts/<id>` → `/contacts/{id}`, so calls group by route like the emulator's stats. */
function routeOf(method: string, requestPath: string): string {
    const generic = requestPath.replace(/^\/contacts\/(?!search$)[^/]+/, '/contacts/{id}')
    return `${method} ${generic}`
}

function searchedEmail(body: unknown): string | null {
    const query = typeof body === 'object' && body !== null ? (body as { query?: unknown }).query : null
    const value = typeof query === 'object' && query !== null ? (query as { value?: unknown }).value : null
    return typeof value === 'string' ? value.toLowerCase() : null
}

/** Counts per window of the emulator's fixed, clock-aligned rate-limit windows, empty windows included. */
function countPerWindow(times: number[], windowMs: number): number[] {
    if (times.length === 0) return []
    const first = Math.floor(Math.min(...times) / windowMs)
    const counts: number[] = []
    for (const at of times) {
        const index = Math.floor(at / windowMs) - first
        while (counts.length <= index) counts.push(0)
        counts[index]++
    }
    return counts
}

function takeSnapshot(emulator: Emulator, cpuMicros: number | null, since: number): EmulatorSnapshot {
    const calls: Record<string, Record<string, number>> = {}
    const lastSearch = new Map<string, number>()
    const repeatGapsMs: number[] = []
    const requests = emulator.requests()
    for (const request of requests) {
        const route = routeOf(request.method, request.path)
        const byStatus = (calls[route] ??= {})
        const status = request.status === 0 ? 'dropped' : String(request.status)
        byStatus[status] = (byStatus[status] ?? 0) + 1
        const email = request.status === 200 && route === SEARCH_ROUTE ? searchedEmail(request.body) : null
        if (email === null) continue
        const previous = lastSearch.get(email)
        if (previous !== undefined) repeatGapsMs.push(request.at - previous)
        lastSearch.set(email, request.at)
    }
    return {
        stats: emulator.stats(),
        stored: emulator.events().length,
        calls,
        searchedEmails: lastSearch.size,
        repeatGapsMs,
        callsPerWindow: countPerWindow(
            requests.filter((request) => request.at >= since).map((request) => request.at),
            emulator.options.windowSeconds * 1000
        ),
        cpuMicros,
    }
}

/** Only plain data: the options cross to the child process as a message. */
type EmulatorOverrides = Pick<EmulatorOptions, 'rateLimit'>

function emulatorOptions(
    contacts: SeedContact[],
    events: number,
    overrides: EmulatorOverrides
): EmulatorOptions {
    // Every request must stay countable: the default record limit could be outgrown by a large run.
    return { tokens: [TOKEN], contacts, recordLimit: Math.max(100_000, events * 5), ...overrides }
}

async function inProcessEmulator(
    contacts: SeedContact[],
    events: number,
    overrides: EmulatorOverrides
): Promise<EmulatorHandle> {
    const emulator = await startEmulator(emulatorOptions(contacts, events, overrides))
    return {
        url: emulator.url,
        snapshot: async (since = 0) => takeSnapshot(emulator, null, since),
        close: () => emulator.close(),
    }
}

type ChildRequest =
    | { id: number; op: 'start'; options: EmulatorOptions }
    | { id: number; op: 'snapshot'; since: number }
    | { id: number; op: 'close' }
type ChildReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string }
/** A request before the RPC layer numbers it (Omit distributed over the union). */
type ChildCall = ChildRequest extends infer R ? (R extends ChildRequest ? Omit<R, 'id'> : never) : never

/** The child side: one emulator, driven over IPC; it exits when the parent goes away. */
function serveEmulatorInChild(): void {
    const cpuAtStart = process.cpuUsage()
    let emulator: Emulator | undefined
    const handle = async (request: ChildRequest): Promise<unknown> => {
        if (request.op === 'start') {
            emulator = await startEmulator(request.options)
            return emulator.url
        }
        if (!emulator) throw new Error('emulator not started')
        if (request.op === 'snapshot') {
            const cpu = process.cpuUsage(cpuAtStart)
            return takeSnapshot(emulator, cpu.user + cpu.system, request.since)
        }
        await emulator.close()
        return null
    }
    process.on('message', (request: ChildRequest) => {
        handle(request).then(
            (value) => process.send?.({ id: request.id, ok: true, value } satisfies ChildReply),
            (error: unknown) =>
                process.send?.({ id: request.id, ok: false, error: String(error) } satisfies ChildReply)
        )
    })
    // Parent gone (finished, crashed or killed): nothing must outlive it.
    process.on('disconnect', () => {
        void (emulator?.close() ?? Promise.resolve()).finally(() => process.exit(0))
    })
}

function childRpc(child: ChildProcess): (request: ChildCall) => Promise<unknown> {
    let nextId = 1
    const pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>()
    child.on('message', (reply: ChildReply) => {
        const waiter = pending.get(reply.id)
        pending.delete(reply.id)
        if (reply.ok) waiter?.resolve(reply.value)
        else waiter?.reject(new Error(`emulator child: ${reply.error}`))
    })
    child.on('exit', (code) => {
        for (const waiter of pending.values()) waiter.reject(new Error(`emulator child exited (${code})`))
        pending.clear()
    })
    return (request) =>
        new Promise((resolve, reject) => {
            const id = nextId++
            pending.set(id, { resolve, reject })
            child.send({ ...request, id } as ChildRequest)
        })
}

async function childEmulator(
    contacts: SeedContact[],
    events: number,
    overrides: EmulatorOverrides
): Promise<EmulatorHandle> {
    // tsx passes its loader in execArgv, which fork() hands on: the child runs this same TypeScript file.
    const child = fork(__filename, [EMULATOR_CHILD_FLAG], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const call = childRpc(child)
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    try {
        const url = (await call({
            op: 'start',
            options: emulatorOptions(contacts, events, overrides),
        })) as string
        return {
            url,
            snapshot: async (since = 0) => (await call({ op: 'snapshot', since })) as EmulatorSnapshot,
            close: async () => {
                await call({ op: 'close' }).catch(() => undefined)
                child.disconnect()
                await exited
            },
        }
    } catch (error) {
        child.kill()
        throw error
    }
}

// ---------------------------------------------------------------------------------------------------
// Small helpers: timers that never outlive the run, progress, CPU
// ---------------------------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))
}

function cpuMicros(since: NodeJS.CpuUsage): number {
    const used = process.cpuUsage(since)
    return used.user + used.system
}

interface Progress {
    update(value: number, detail: string): void
    stop(): void
}

function progressBar(options: BenchOptions, title: string, total: number): Progress {
    if (!options.progress || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined }
    const bar = new SingleBar(
        {
            stream: process.stderr,
            format: `${title.padEnd(14)} [{bar}] {value}/{total} delivered | {detail}`,
            clearOnComplete: true,
            hideCursor: true,
        },
        Presets.shades_classic
    )
    bar.start(total, 0, { detail: '' })
    return { update: (value, detail) => bar.update(value, { detail }), stop: () => bar.stop() }
}

// ---------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------

export interface ScenarioResult {
    name: ScenarioName
    /** Runtime and feed, in words. */
    setup: string
    events: number
    /** Events that should reach Intercom: every event of the workload. */
    expected: number
    /** As the client reported: onEvent, plus runEveryMinute for the plugin-server queue. */
    delivered: number
    deliveredFromQueue: number
    /** Events the emulator stored; `lost` = expected − stored. */
    stored: number
    lost: number
    /** POSTs Intercom accepted but deduplicated (a retry of an event already stored). */
    deduplicated: number
    failed: Record<string, number>
    /** GET /me, one per worker at setup: not counted in `calls`. */
    setupCalls: number
    /** Every call after setup, whatever the answer. */
    calls: number
    callsByRoute: Record<string, Record<string, number>>
    rateLimited: number
    /** Distinct emails searched with success: the floor of lookups with a shared cache. */
    searchedEmails: number
    /** Successful searches beyond one per email (concurrent lookups of one email on different workers). */
    duplicateSearches: number
    /** How long after the previous search of the same email each repeated search came, in ms. */
    repeatedSearchGapMs: { median: number; max: number } | null
    callsPerDelivered: number | null
    wallSeconds: number
    /** Until every event had its first outcome (delivered, queued, failed); the rest is draining the queue. */
    feedSeconds: number
    eventsPerSecond: number
    /** Host process CPU per event: the plugin, its HTTP client and the harness (emulator excluded if `child`). */
    hostCpuMicrosPerEvent: number
    emulatorCpuMicrosPerCall: number | null
    /** Calls (setup excluded) in each of the emulator's 10 s windows, from the first event on. */
    callsPerWindow: number[]
    /** plugin-server: host CPU until every event had its first outcome, and while the queue drained (µs). */
    phaseCpuMicros?: { feed: number; drain: number }
    /** plugin-server: events each runEveryMinute run delivered from the queue. */
    queueRuns?: number[]
    /** plugin-server: onEvent results that were parked in the queue. */
    queued?: number
    logLines: number
}

/** Host CPU per event in steady state (median over passes after a warm-up pass), µs. */
export interface CpuMeasurement {
    /** index.ts in the plugin-server harness. */
    pluginMicrosPerEvent: number
    /** The same harness running a plugin that only POSTs each event: harness and HTTP client overhead. */
    nullPluginMicrosPerEvent: number
    /** The difference: the plugin's own work. */
    ownMicrosPerEvent: number
}

export interface CpuResult {
    /** Against the emulator over HTTP with its rate limit lifted (emulator in a child process unless in-process). */
    http: CpuMeasurement
    /** Against an in-process stub of Intercom: no sockets at all. */
    stub: CpuMeasurement
    passes: number
}

export interface Target {
    label: string
    value: string
    met: boolean
    note: string
}

export interface BenchResults {
    generatedAt: string
    node: string
    options: Omit<BenchOptions, 'print' | 'out' | 'progress'>
    emulatorLimit: { calls: number; windowSeconds: number }
    scenarios: ScenarioResult[]
    cpu: CpuResult | null
    targets: Target[]
}

function sumValues(counts: Record<string, number> | undefined): number {
    return Object.values(counts ?? {}).reduce((sum, count) => sum + count, 0)
}

interface Measured {
    before: EmulatorSnapshot
    after: EmulatorSnapshot
    feedMs: number
    wallMs: number
    hostCpu: number
}

function callCounts(
    measured: Measured
): Pick<
    ScenarioResult,
    | 'setupCalls'
    | 'calls'
    | 'callsByRoute'
    | 'rateLimited'
    | 'searchedEmails'
    | 'duplicateSearches'
    | 'repeatedSearchGapMs'
> {
    const { before, after } = measured
    const search = after.calls[SEARCH_ROUTE] ?? {}
    return {
        // A fresh emulator per scenario: everything before the first event is setup.
        setupCalls: before.stats.calls,
        calls: after.stats.calls - before.stats.calls,
        callsByRoute: after.calls,
        rateLimited: after.stats.rateLimited - before.stats.rateLimited,
        searchedEmails: after.searchedEmails,
        duplicateSearches: (search['200'] ?? 0) - after.searchedEmails,
        repeatedSearchGapMs:
            after.repeatGapsMs.length === 0
                ? null
                : { median: median(after.repeatGapsMs), max: Math.max(...after.repeatGapsMs) },
    }
}

function resultOf(
    base: Pick<ScenarioResult, 'name' | 'setup' | 'delivered' | 'deliveredFromQueue' | 'failed' | 'logLines'>,
    workload: Workload,
    measured: Measured
): ScenarioResult {
    const counts = callCounts(measured)
    const events = workload.events.length
    const { after, before } = measured
    const emulatorCpu =
        after.cpuMicros !== null && before.cpuMicros !== null ? after.cpuMicros - before.cpuMicros : null
    return {
        ...base,
        events,
        expected: events,
        stored: after.stored,
        lost: events - after.stored,
        callsPerWindow: after.callsPerWindow,
        deduplicated: after.stats.eventsDeduplicated,
        ...counts,
        callsPerDelivered: after.stored === 0 ? null : counts.calls / after.stored,
        wallSeconds: measured.wallMs / 1000,
        feedSeconds: measured.feedMs / 1000,
        eventsPerSecond: after.stored / (measured.wallMs / 1000),
        hostCpuMicrosPerEvent: measured.hostCpu / events,
        emulatorCpuMicrosPerCall:
            emulatorCpu === null || counts.calls === 0 ? null : emulatorCpu / counts.calls,
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenarios that run index.ts in the harness
// ---------------------------------------------------------------------------------------------------

interface HarnessScenario {
    name: ScenarioName
    setup: string
    mode: HarnessMode
    /** Events per second; undefined feeds them as fast as the workers take them. */
    rate?: number
}

interface Context {
    options: BenchOptions
    workload: Workload
    startEmulator(overrides?: EmulatorOverrides): Promise<EmulatorHandle>
}

class DeliveryCounter {
    delivered = 0
    queued = 0
    constructor(private readonly progress: Progress) {}
    settled(status: string): void {
        if (status === 'delivered') this.delivered++
        if (status === 'queued') this.queued++
        this.show(status === 'queued' ? 'queueing what Intercom cannot take now' : 'sending')
    }
    drained(count: number, remaining: number): void {
        this.delivered += count
        this.show(`runEveryMinute: ${formatCount(remaining)} waiting in the retry queue`)
    }
    private show(detail: string): void {
        this.progress.update(this.delivered, detail)
    }
}

/** All at once (the workers' slots pace them), or at a steady rate. */
async function feed(
    harness: Harness,
    events: HarnessEvent[],
    counter: DeliveryCounter,
    rate?: number
): Promise<void> {
    const started = Date.now()
    const pending: Promise<void>[] = []
    for (let i = 0; i < events.length; i++) {
        if (rate !== undefined) await sleep(started + (i * 1000) / rate - Date.now())
        pending.push(harness.send(events[i]).then((record) => counter.settled(record.status)))
    }
    await Promise.all(pending)
}

/**
 * runEveryMinute on a clock started with the feed, as PostHog's schedule would run it, until the queue is
 * empty (or a bound far above what draining needs, so a stuck queue ends the run instead of hanging it).
 */
async function drainQueue(
    harness: Harness,
    ctx: Context,
    started: number,
    counter: DeliveryCounter
): Promise<number[]> {
    const runs: number[] = []
    const maxRuns = Math.ceil(ctx.workload.events.length / 500) + 20
    for (let run = 1; run <= maxRuns; run++) {
        await sleep(started + run * ctx.options.minuteMs - Date.now())
        const report = await harness.runMinute()
        runs.push(report?.delivered ?? 0)
        counter.drained(report?.delivered ?? 0, report?.remaining ?? 0)
        if ((report?.remaining ?? 0) === 0) break
    }
    return runs
}

async function runHarnessScenario(scenario: HarnessScenario, ctx: Context): Promise<ScenarioResult> {
    const { options, workload } = ctx
    const emulator = await ctx.startEmulator()
    const progress = progressBar(options, scenario.name, workload.events.length)
    let harness: Harness | undefined
    try {
        harness = await createHarness({
            mode: scenario.mode,
            workers: options.workers,
            concurrency: options.concurrency,
            distribute: options.distribute,
            config: BENCH_CONFIG,
            emulatorUrl: emulator.url,
            minuteMs: 0, // the drain below is the clock
            maxLogLines: 100,
        })
        const before = await emulator.snapshot()
        const counter = new DeliveryCounter(progress)
        const cpuStart = process.cpuUsage()
        const started = Date.now()
        await feed(harness, workload.events, counter, scenario.rate)
        const feedMs = Date.now() - started
        const feedCpu = cpuMicros(cpuStart)
        // Nothing queued: the run ends with the feed, not at the next runEveryMinute.
        const queueRuns =
            scenario.mode === 'plugin-server'
                ? counter.queued > 0
                    ? await drainQueue(harness, ctx, started, counter)
                    : []
                : undefined
        const wallMs = Date.now() - started
        const hostCpu = cpuMicros(cpuStart)
        const after = await emulator.snapshot(started)
        const summary: HarnessSummary = harness.summary()
        const result = resultOf(
            {
                name: scenario.name,
                setup: scenario.setup,
                delivered: summary.delivered + summary.minute.delivered,
                deliveredFromQueue: summary.minute.delivered,
                failed: summary.failed,
                logLines: sumValues(summary.logLevels),
            },
            workload,
            { before, after, feedMs, wallMs, hostCpu }
        )
        if (!queueRuns) return result
        const phaseCpuMicros = { feed: feedCpu, drain: hostCpu - feedCpu }
        return { ...result, queueRuns, queued: summary.queued, phaseCpuMicros }
    } finally {
        progress.stop()
        await harness?.close()
        await emulator.close()
    }
}

// ---------------------------------------------------------------------------------------------------
// The no-cache reference: the old plugin's two calls per event, with the plugin's rate-limit manners
// ---------------------------------------------------------------------------------------------------

/** Waits out spent windows the way the plugin does: at 429, or when 1% or less of the window is left. */
class RateGate {
    private until = 0

    async wait(): Promise<void> {
        while (Date.now() < this.until) await sleep(this.until - Date.now())
    }

    observe(response: FetchLike): void {
        const remaining = Number(response.headers.get('x-ratelimit-remaining'))
        const limit = Number(response.headers.get('x-ratelimit-limit'))
        const reset = Number(response.headers.get('x-ratelimit-reset')) * 1000
        const spent =
            response.status === 429 || (Number.isFinite(remaining) && remaining <= Math.floor(limit / 100))
        if (spent) this.until = Math.max(this.until, Number.isFinite(reset) ? reset : Date.now() + 10_000)
    }
}

interface FetchLike {
    status: number
    headers: { get(name: string): string | null }
    text(): Promise<string>
}

class ReferenceClient {
    private readonly gate = new RateGate()
    constructor(private readonly baseUrl: string) {}

    /** One call, repeated after the window resets when Intercom answers 429. */
    private async call(route: string, body: unknown): Promise<{ status: number; text: string }> {
        for (;;) {
            await this.gate.wait()
            const response: FetchLike = await fetch(this.baseUrl + route, {
                method: 'POST',
                headers: {
                    Authorization: `Bearer ${TOKEN}`,
                    Accept: 'application/json',
                    'Content-Type': 'application/json',
                    'Intercom-Version': '2.11',
                },
                body: JSON.stringify(body),
            })
            this.gate.observe(response)
            const text = await response.text()
            if (response.status !== 429) return { status: response.status, text }
        }
    }

    /** Search by email, then POST /events by contact id (users before leads): two calls, every time. */
    async deliver(event: HarnessEvent): Promise<boolean> {
        const email = String(event.properties?.email)
        const search = await this.call('/contacts/search', {
            query: { field: 'email', operator: '=', value: email },
        })
        const contacts =
            (JSON.parse(search.text) as { data?: Array<{ id: string; role: string }> }).data ?? []
        const contact = contacts.find((c) => c.role === 'user') ?? contacts[0]
        if (search.status !== 200 || !contact) return false
        const posted = await this.call('/events', {
            event_name: event.event,
            created_at: Math.floor(Date.parse(event.timestamp) / 1000),
            id: contact.id,
        })
        return posted.status === 202
    }
}

async function runNoCache(ctx: Context): Promise<ScenarioResult> {
    const { options, workload } = ctx
    const parallel = options.workers * options.concurrency
    const emulator = await ctx.startEmulator()
    const progress = progressBar(options, 'no-cache', workload.events.length)
    try {
        const client = new ReferenceClient(emulator.url)
        const before = await emulator.snapshot()
        const cpuStart = process.cpuUsage()
        const started = Date.now()
        let next = 0
        let delivered = 0
        const failed: Record<string, number> = {}
        const lane = async (): Promise<void> => {
            while (next < workload.events.length) {
                const event = workload.events[next++]
                if (await client.deliver(event)) delivered++
                else failed['not delivered'] = (failed['not delivered'] ?? 0) + 1
                progress.update(delivered, 'search + POST /events for every event')
            }
        }
        await Promise.all(Array.from({ length: parallel }, lane))
        const wallMs = Date.now() - started
        const feedMs = wallMs
        const hostCpu = cpuMicros(cpuStart)
        const after = await emulator.snapshot(started)
        return resultOf(
            {
                name: 'no-cache',
                setup: `${parallel} requests in flight; search + POST per event (old plugin), waits out 429s`,
                delivered,
                deliveredFromQueue: 0,
                failed,
                logLines: 0,
            },
            workload,
            { before, after, feedMs, wallMs, hostCpu }
        )
    } finally {
        progress.stop()
        await emulator.close()
    }
}

// ---------------------------------------------------------------------------------------------------
// The replay: the workload as an export file, sent as a backfill would be
// ---------------------------------------------------------------------------------------------------

/**
 * `npm run replay` on the workload written as JSON Lines, to the real-Intercom target (host guard and all)
 * with Intercom's hosts redirected to the emulator: what a backfill makes of Intercom's rate limit.
 */
async function runReplay(ctx: Context): Promise<ScenarioResult> {
    const { workload } = ctx
    const emulator = await ctx.startEmulator()
    const directory = mkdtempSync(path.join(tmpdir(), 'intercom-bench-replay-'))
    try {
        const exportFile = path.join(directory, 'export.jsonl')
        writeFileSync(exportFile, `${workload.events.map((event) => JSON.stringify(event)).join('\n')}\n`)
        const before = await emulator.snapshot()
        const cpuStart = process.cpuUsage()
        const started = Date.now()
        const summary = await replay({
            inputs: [exportFile],
            config: BENCH_CONFIG,
            target: { kind: 'intercom' },
            fetch: redirectingFetch(emulator.url, hostNodeFetch),
            checkpointDir: false,
            progress: false,
            print: () => undefined,
            notice: () => undefined,
        })
        const wallMs = Date.now() - started
        const hostCpu = cpuMicros(cpuStart)
        const after = await emulator.snapshot(started)
        const file = summary.files[0]
        const result = resultOf(
            {
                name: 'replay',
                setup: 'npm run replay of the workload as one JSON Lines file, default settings',
                delivered: file.delivered,
                deliveredFromQueue: 0,
                failed: file.reasons,
                logLines: 0,
            },
            workload,
            { before, after, feedMs: wallMs, wallMs, hostCpu }
        )
        // The replay checks the token (GET /me) once it has started: setup, as for the harness workers.
        const setupCalls = sumValues(result.callsByRoute[SETUP_ROUTE])
        const calls = result.calls - setupCalls
        return {
            ...result,
            setupCalls,
            calls,
            callsPerDelivered: result.stored === 0 ? null : calls / result.stored,
        }
    } finally {
        await emulator.close()
        rmSync(directory, { recursive: true, force: true })
    }
}

// ---------------------------------------------------------------------------------------------------
// CPU: the plugin against an in-process stub of Intercom, minus a plugin that only posts
// ---------------------------------------------------------------------------------------------------

/** A plugin that does the least an Intercom plugin can: one POST per event, nothing else. */
const NULL_PLUGIN = `import fetch from 'node-fetch'
export async function onEvent(event) {
    const response = await fetch('https://api.intercom.io/events', {
        method: 'POST',
        headers: { Authorization: 'Bearer ${TOKEN}', 'Content-Type': 'application/json' },
        body: JSON.stringify({ event_name: event.event, created_at: 0, id: event.distinct_id }),
        timeout: 10000,
    })
    await response.text()
    return { status: 'delivered' }
}
`

function stubHeaders(values: Record<string, string>): FetchResponse['headers'] {
    return {
        get: (name) => values[name.toLowerCase()] ?? null,
        forEach: (callback) => Object.entries(values).forEach(([name, value]) => callback(value, name)),
    }
}

/** Answers like Intercom with a window that never runs out: GET /me, search (one user), POST /events. */
const stubIntercom: FetchFn = async (input, init) => {
    const route = new URL(String(input)).pathname
    let status = 202
    let body = ''
    if (route === '/me') {
        status = 200
        body = JSON.stringify({ type: 'admin', app: { region: 'US' } })
    } else if (route === '/contacts/search') {
        status = 200
        const email = searchedEmail(JSON.parse(init?.body ?? '{}')) ?? ''
        body = JSON.stringify({ type: 'list', data: [{ type: 'contact', id: `c-${email}`, role: 'user' }] })
    }
    const headers = stubHeaders({
        'x-ratelimit-limit': '1666',
        'x-ratelimit-remaining': '1666',
        'x-ratelimit-reset': String(Math.ceil(Date.now() / 1000) + 10),
    })
    return { status, ok: status < 300, headers, json: async () => JSON.parse(body), text: async () => body }
}

function median(values: number[]): number {
    const sorted = [...values].sort((a, b) => a - b)
    const middle = Math.floor(sorted.length / 2)
    return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/** Fresh uuids per pass, so nothing is mistaken for a repeat; the cache warms on the warm-up pass. */
function passEvents(events: HarnessEvent[], pass: number): HarnessEvent[] {
    return events.map((event) => ({
        ...event,
        uuid: `${event.uuid.slice(0, -4)}${pass.toString(16).padStart(4, '0')}`,
    }))
}

/** Where the harness sends the plugin's calls during a CPU measurement. */
type CpuTarget = { emulatorUrl: string } | { emulatorUrl: string; fetch: FetchFn }

async function cpuPerEvent(ctx: Context, pluginFile: string | undefined, target: CpuTarget): Promise<number> {
    const harness = await createHarness({
        mode: 'plugin-server',
        workers: ctx.options.workers,
        concurrency: ctx.options.concurrency,
        config: BENCH_CONFIG,
        pluginFile,
        ...target,
        minuteMs: 0,
        maxLogLines: 0,
    })
    try {
        const samples: number[] = []
        for (let pass = 0; pass <= ctx.options.cpuPasses; pass++) {
            const events = passEvents(ctx.workload.events, pass)
            const start = process.cpuUsage()
            await harness.run(events)
            // Pass 0 warms the JIT and the contact cache; the median of the rest is steady state.
            if (pass > 0) samples.push(cpuMicros(start) / events.length)
        }
        return median(samples)
    } finally {
        await harness.close()
    }
}

async function measurePair(ctx: Context, nullPluginFile: string, target: CpuTarget): Promise<CpuMeasurement> {
    const plugin = await cpuPerEvent(ctx, undefined, target)
    const nullPlugin = await cpuPerEvent(ctx, nullPluginFile, target)
    return {
        pluginMicrosPerEvent: plugin,
        nullPluginMicrosPerEvent: nullPlugin,
        ownMicrosPerEvent: plugin - nullPlugin,
    }
}

async function runCpu(ctx: Context): Promise<CpuResult> {
    const directory = mkdtempSync(path.join(tmpdir(), 'intercom-bench-'))
    // The rate limit is lifted here: this measures CPU, and waiting out windows would only add idle time.
    const emulator = await ctx.startEmulator({ rateLimit: 1_000_000_000 })
    try {
        const nullPluginFile = path.join(directory, 'null-plugin.ts')
        writeFileSync(nullPluginFile, NULL_PLUGIN)
        return {
            http: await measurePair(ctx, nullPluginFile, { emulatorUrl: emulator.url }),
            stub: await measurePair(ctx, nullPluginFile, {
                emulatorUrl: 'http://intercom-stub.invalid',
                fetch: stubIntercom,
            }),
            passes: ctx.options.cpuPasses,
        }
    } finally {
        await emulator.close()
        rmSync(directory, { recursive: true, force: true })
    }
}

// ---------------------------------------------------------------------------------------------------
// Targets and printing
// ---------------------------------------------------------------------------------------------------

/** The workload's own floor: every person searched once, every event posted once (1 + people/events). */
export function workloadFloor(options: Pick<BenchOptions, 'events' | 'people'>): number {
    return 1 + Math.min(options.people, options.events) / options.events
}

/** A little above the floor: two workers may look the same new person up at once. */
const FLOOR_SLACK = 1.01
/** Of each full rate-limit window, what a backfill must use at least. */
const WINDOW_USE_TARGET = 0.9
const WINDOW_LIMIT = 1666

/** Windows wholly inside the run: the first and the last are cut by the run's start and end. */
export function fullWindows(result: ScenarioResult): number[] {
    return result.callsPerWindow.slice(1, -1)
}

function callsTarget(result: ScenarioResult, options: BenchOptions, others: string): Target {
    const floor = workloadFloor(options)
    const ratio = result.callsPerDelivered ?? Infinity
    const extra = result.calls - result.stored - result.searchedEmails
    return {
        label: `${result.name} calls per delivered event ≤ ${(floor * FLOOR_SLACK).toFixed(4)}`,
        value: ratio.toFixed(4),
        met: ratio <= floor * FLOOR_SLACK,
        note:
            `the workload's floor ${floor.toFixed(4)} (1 POST per event + 1 search per person, ${options.people} people for ${options.events} events) + 1%; ` +
            `${extra} calls beyond one per event and one per person searched: ${result.rateLimited} answered 429 and sent again, ` +
            `${result.duplicateSearches} repeated searches${others}`,
    }
}

function pluginServerTargets(
    result: ScenarioResult,
    options: BenchOptions,
    noCache?: ScenarioResult
): Target[] {
    const share = result.calls === 0 ? 0 : result.rateLimited / result.calls
    return [
        callsTarget(
            result,
            options,
            noCache ? `; no-cache: ${(noCache.callsPerDelivered ?? 0).toFixed(4)}` : ''
        ),
        {
            label: 'plugin-server events lost = 0',
            value: String(result.lost),
            met: result.lost === 0,
            note: `${result.stored} of ${result.expected} stored by the emulator`,
        },
        {
            label: 'plugin-server calls answered 429 < 1%',
            value: formatPercent(result.rateLimited, result.calls),
            met: share < 0.01,
            note: `${result.rateLimited} of ${result.calls} calls`,
        },
    ]
}

function replayTargets(result: ScenarioResult, options: BenchOptions): Target[] {
    const targets = [
        callsTarget(result, options, ''),
        {
            label: 'replay events lost = 0',
            value: String(result.lost),
            met: result.lost === 0,
            note: `${result.stored} of ${result.expected} stored by the emulator`,
        },
    ]
    const full = fullWindows(result)
    if (full.length > 0) {
        const used = full.reduce((sum, calls) => sum + calls, 0) / (full.length * WINDOW_LIMIT)
        targets.push({
            label: `replay uses ≥ ${WINDOW_USE_TARGET * 100}% of each full rate-limit window`,
            value: `${(used * 100).toFixed(1)}%`,
            met: used >= WINDOW_USE_TARGET,
            note: `calls in the ${full.length} windows wholly inside the run: ${full.map(formatCount).join(', ')} of ${formatCount(WINDOW_LIMIT)}`,
        })
    }
    return targets
}

/** Each scenario judged against the workload's own floor, so a small run is held to what it can reach. */
function evaluateTargets(results: ScenarioResult[], options: BenchOptions): Target[] {
    const find = (name: ScenarioName) => results.find((result) => result.name === name)
    const pluginServer = find('plugin-server')
    const replayed = find('replay')
    return [
        ...(pluginServer ? pluginServerTargets(pluginServer, options, find('no-cache')) : []),
        ...(replayed ? replayTargets(replayed, options) : []),
    ]
}

function micros(value: number | null): string {
    return value === null ? 'n/a' : value.toFixed(0)
}

/** Calls answered 2xx per delivered event: what the client needed, 429s aside. */
function okCallsPerDelivered(result: ScenarioResult): string {
    const ok = Object.entries(result.callsByRoute)
        .filter(([route]) => route !== SETUP_ROUTE)
        .flatMap(([, statuses]) => Object.entries(statuses))
        .filter(([status]) => status.startsWith('2'))
        .reduce((sum, [, count]) => sum + count, 0)
    return formatRatio(ok, result.stored, 3)
}

function summaryTable(results: ScenarioResult[]): string[] {
    const rows = results.map((result) => [
        result.name,
        formatCount(result.stored),
        formatCount(result.lost),
        result.callsPerDelivered === null ? 'n/a' : result.callsPerDelivered.toFixed(3),
        okCallsPerDelivered(result),
        `${formatCount(result.rateLimited)} (${formatPercent(result.rateLimited, result.calls)})`,
        formatCount(result.setupCalls),
        result.eventsPerSecond.toFixed(0),
        result.wallSeconds.toFixed(1),
    ])
    return formatTable(
        [
            { header: 'scenario' },
            { header: 'delivered', align: 'right' },
            { header: 'lost', align: 'right' },
            { header: 'calls/delivered', align: 'right' },
            { header: '2xx only', align: 'right' },
            { header: '429s (% of calls)', align: 'right' },
            { header: 'setup calls', align: 'right' },
            { header: 'events/s', align: 'right' },
            { header: 'wall s', align: 'right' },
        ],
        rows,
        '  '
    )
}

function routeTable(results: ScenarioResult[]): string[] {
    const rows: string[][] = []
    for (const result of results) {
        for (const [route, statuses] of Object.entries(result.callsByRoute).sort()) {
            const answers = Object.entries(statuses)
                .sort()
                .map(([status, count]) => `${status}: ${formatCount(count)}`)
                .join(', ')
            const label = route === SETUP_ROUTE ? `${route} (setup)` : route
            rows.push([result.name, label, formatCount(sumValues(statuses)), answers])
        }
    }
    return formatTable(
        [
            { header: 'scenario' },
            { header: 'route' },
            { header: 'calls', align: 'right' },
            { header: 'answers' },
        ],
        rows,
        '  '
    )
}

function searchLine(result: ScenarioResult): string {
    const gaps = result.repeatedSearchGapMs
    const timing = gaps
        ? ` (median ${gaps.median} ms, max ${formatCount(gaps.max)} ms after the previous search of the same email)`
        : ''
    return `    Searches: ${formatCount(result.searchedEmails)} emails, ${formatCount(result.duplicateSearches)} searched again${timing}.`
}

function queueLines(result: ScenarioResult, options: BenchOptions): string[] {
    if (!result.queueRuns || !result.queued) return []
    const lines = [
        `    First outcome of every event after ${result.feedSeconds.toFixed(1)} s: ${formatCount(result.delivered - result.deliveredFromQueue)} delivered at once, ${formatCount(result.queued)} parked in the retry queue.`,
        `    runEveryMinute (every ${options.minuteMs / 1000} s here; 60 s in PostHog) delivered ${result.queueRuns.map(formatCount).join(', ')} per run:`,
        `    at most one rate-limit window per run, so with PostHog's schedule this queue takes about ${result.queueRuns.length} minutes to drain.`,
    ]
    const cpu = result.phaseCpuMicros
    if (cpu) {
        lines.push(
            `    Host CPU: ${(cpu.feed / result.events).toFixed(0)} µs/event until every event had an outcome, then ${formatRatio(cpu.drain, result.deliveredFromQueue, 0)} µs per event delivered from the queue.`
        )
    }
    return lines
}

/** Failure reasons with their timestamps masked, so "backing off until <time>" counts as one reason. */
function groupedFailures(failed: Record<string, number>): Array<[string, number]> {
    const grouped: Record<string, number> = {}
    for (const [reason, count] of Object.entries(failed)) {
        const key = reason.replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '…')
        grouped[key] = (grouped[key] ?? 0) + count
    }
    return Object.entries(grouped).sort(([, a], [, b]) => b - a)
}

function scenarioNotes(results: ScenarioResult[], options: BenchOptions): string[] {
    const lines: string[] = []
    for (const result of results) {
        lines.push(`  ${result.name}: ${result.setup}.`)
        lines.push(
            `    Calls per 10 s window (limit 1,666): ${result.callsPerWindow.map(formatCount).join(', ')}.`
        )
        lines.push(searchLine(result))
        lines.push(...queueLines(result, options))
        if (result.deduplicated > 0)
            lines.push(`    ${formatCount(result.deduplicated)} POSTs were repeats Intercom deduplicated.`)
        if (result.logLines > 0)
            lines.push(
                `    Plugin log: ${formatCount(result.logLines)} lines for ${formatCount(result.events)} events.`
            )
        for (const [reason, count] of groupedFailures(result.failed))
            lines.push(`    Failed ×${formatCount(count)}: ${reason}`)
    }
    return lines
}

function cpuTable(results: ScenarioResult[]): string[] {
    const rows = results.map((result) => [
        result.name,
        micros(result.hostCpuMicrosPerEvent),
        formatRatio(result.hostCpuMicrosPerEvent * result.events, result.calls, 0),
        micros(result.emulatorCpuMicrosPerCall),
    ])
    return formatTable(
        [
            { header: 'scenario' },
            { header: 'host µs/event', align: 'right' },
            { header: 'host µs/call', align: 'right' },
            { header: 'emulator µs/call', align: 'right' },
        ],
        rows,
        '  '
    )
}

function cpuPairTable(cpu: CpuResult): string[] {
    const row = (label: string, m: CpuMeasurement): string[] => [
        label,
        m.pluginMicrosPerEvent.toFixed(0),
        m.nullPluginMicrosPerEvent.toFixed(0),
        m.ownMicrosPerEvent.toFixed(0),
    ]
    return formatTable(
        [
            { header: 'Intercom' },
            { header: 'index.ts', align: 'right' },
            { header: 'POST-only plugin', align: 'right' },
            { header: "plugin's own work", align: 'right' },
        ],
        [row('emulator over HTTP, no rate limit', cpu.http), row('stub in this process, no HTTP', cpu.stub)],
        '  '
    )
}

function cpuLines(results: BenchResults, options: BenchOptions): string[] {
    const where =
        options.emulator === 'child'
            ? '  The emulator runs in a child process and reports its own cpuUsage, shown apart.'
            : '  The emulator ran in this process, so host figures include it (emulator µs/call: n/a).'
    const lines = [
        '  Method: process.cpuUsage() of this process around the work, ÷ events. The host process holds the plugin',
        '  (in its sandbox), node-fetch, the harness, and for no-cache the reference client.',
        where,
        '',
        '  In the rate-limited runs above, from the first event to the last delivery (warm-up in fresh sandboxes,',
        '  backing off, the retry queue and its log lines included):',
        ...cpuTable(results.scenarios),
    ]
    const cpu = results.cpu
    if (!cpu) return lines
    return [
        ...lines,
        '',
        `  The plugin's own work (scenario cpu): host µs per event in steady state (median of ${cpu.passes} passes after a`,
        '  warm-up pass, warm contact cache, one POST per event), index.ts minus a plugin that only POSTs each event:',
        ...cpuPairTable(cpu),
    ]
}

function targetLines(targets: Target[]): string[] {
    return targets.map(
        (target) =>
            `  ${target.met ? 'met    ' : 'NOT MET'} ${target.label}: ${target.value}  (${target.note})`
    )
}

function printResults(results: BenchResults, options: BenchOptions): void {
    const lines = [
        ...heading('Results'),
        ...summaryTable(results.scenarios),
        '',
        '  calls/delivered: calls after setup (429s included) ÷ events stored; 2xx only: the same without the 429s.',
        '  setup calls: GET /me, one per harness worker at start, not counted in calls/delivered.',
        '  events/s: events stored ÷ wall time from the first event to the last delivery.',
        ...heading('Calls by route and answer (as the emulator recorded them)'),
        ...routeTable(results.scenarios),
        ...heading('Scenarios'),
        ...scenarioNotes(results.scenarios, options),
        ...heading('CPU'),
        ...cpuLines(results, options),
        ...heading('Targets'),
        ...targetLines(results.targets),
    ]
    for (const line of lines) options.print(line)
}

function printIntroduction(options: BenchOptions): void {
    const ceiling = Math.floor((1666 / 10) * (options.events / (options.events + options.people)))
    const lines = [
        'Intercom plugin benchmark',
        '=========================',
        `${formatCount(options.events)} events from ${formatCount(options.people)} people, interleaved at random (seed ${options.seed}). Every event is a triggering`,
        'event of a contact Intercom knows, so every one must be stored. Each scenario runs alone against a fresh',
        `emulator (${options.emulator === 'child' ? 'in a child process' : 'in this process'}) at its default rate limit: 1,666 calls per 10 s window, real time. At one`,
        `POST per event plus one search per person that allows at most ~${ceiling} events/s.`,
        '',
        `  plugin-server  index.ts in the plugin-server harness: ${options.workers} workers × ${options.concurrency} events in flight (${options.distribute}), one shared`,
        '                 in-memory cache; events fed as fast as taken; what Intercom cannot take now waits in the',
        `                 plugin's retry queue, drained by runEveryMinute (every ${options.minuteMs / 1000} s here to keep the run short).`,
        "  cdp            index.ts in PostHog's current executor: no cache (each worker remembers its own lookups),",
        '                 no runEveryMinute, no retries; same burst, same spread over workers.',
        `  cdp-paced      the same runtime fed ${options.pacedRate} events/s, below the limit.`,
        "  no-cache       not the plugin: a reference client in tools/bench/bench.ts making the old plugin's two calls per",
        `                 event (search, then POST /events by id), ${options.workers * options.concurrency} in flight, waiting out spent windows as the`,
        '                 plugin does. Only the cache differs.',
        '  replay         the workload as an export file through npm run replay (tools/replay), to the real-Intercom',
        '                 target redirected to the emulator: how much of each rate-limit window a backfill uses.',
        '  cpu            host CPU of index.ts minus a plugin that only POSTs, over HTTP (limit lifted) and stubbed.',
        '',
        'Calls, 429s and stored events are counted by the emulator; lost = events not stored.',
        `Running: ${options.scenarios.join(', ')}.`,
    ]
    for (const line of lines) options.print(line)
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

/** The options that shaped the results (not where they were printed or written). */
function recordedOptions(options: BenchOptions): BenchResults['options'] {
    const {
        events,
        people,
        workers,
        concurrency,
        distribute,
        minuteMs,
        pacedRate,
        scenarios,
        emulator,
        cpuPasses,
        seed,
    } = options
    return {
        events,
        people,
        workers,
        concurrency,
        distribute,
        minuteMs,
        pacedRate,
        scenarios,
        emulator,
        cpuPasses,
        seed,
    }
}

function harnessScenarios(
    options: BenchOptions
): Record<'plugin-server' | 'cdp' | 'cdp-paced', HarnessScenario> {
    return {
        'plugin-server': {
            name: 'plugin-server',
            setup: `${options.workers} workers sharing a cache, events fed as fast as taken, retry queue drained by runEveryMinute`,
            mode: 'plugin-server',
        },
        cdp: {
            name: 'cdp',
            setup: `${options.workers} workers, no cache (each keeps its own lookups), no runEveryMinute, no retries, events fed as fast as taken`,
            mode: 'cdp',
        },
        'cdp-paced': {
            name: 'cdp-paced',
            setup: `as cdp, events fed at ${options.pacedRate}/s (below the limit)`,
            mode: 'cdp',
            rate: options.pacedRate,
        },
    }
}

async function runScenario(name: ScenarioName, ctx: Context): Promise<ScenarioResult | null> {
    if (name === 'cpu') return null
    if (name === 'no-cache') return runNoCache(ctx)
    if (name === 'replay') return runReplay(ctx)
    return runHarnessScenario(harnessScenarios(ctx.options)[name], ctx)
}

/** Runs the chosen scenarios one after the other (so none steals CPU or rate limit from another). */
export async function runBench(overrides: Partial<BenchOptions> = {}): Promise<BenchResults> {
    const options: BenchOptions = { ...DEFAULT_OPTIONS, ...overrides }
    const workload = buildWorkload(options.events, options.people, options.seed)
    const ctx: Context = {
        options,
        workload,
        startEmulator: (overrides = {}) =>
            options.emulator === 'child'
                ? childEmulator(workload.contacts, workload.events.length, overrides)
                : inProcessEmulator(workload.contacts, workload.events.length, overrides),
    }
    printIntroduction(options)
    const scenarios: ScenarioResult[] = []
    for (const name of options.scenarios) {
        const result = await runScenario(name, ctx)
        if (result) {
            scenarios.push(result)
            options.print(
                `  done: ${name}: ${formatCount(result.stored)} stored in ${result.wallSeconds.toFixed(1)} s, ${formatRatio(result.calls, result.stored, 3)} calls per delivered event`
            )
        }
    }
    const cpu = options.scenarios.includes('cpu') ? await runCpu(ctx) : null
    const results: BenchResults = {
        generatedAt: new Date().toISOString(),
        node: process.version,
        options: recordedOptions(options),
        emulatorLimit: { calls: 1666, windowSeconds: 10 },
        scenarios,
        cpu,
        targets: evaluateTargets(scenarios, options),
    }
    printResults(results, options)
    if (options.out) {
        writeFileSync(options.out, `${JSON.stringify(results, null, 2)}\n`)
        options.print(`\nJSON: ${path.relative(process.cwd(), options.out) || options.out}`)
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

const FLAGS = {
    quick: { type: 'boolean' },
    events: { type: 'string' },
    people: { type: 'string' },
    workers: { type: 'string' },
    distribute: { type: 'string' },
    'minute-ms': { type: 'string' },
    'paced-rate': { type: 'string' },
    scenarios: { type: 'string' },
    out: { type: 'string' },
    seed: { type: 'string' },
    help: { type: 'boolean' },
} as const

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
        if (printedHelp(options.help, USAGE)) return 0
        await runBench(options)
        return 0
    })
}

if (process.argv.includes(EMULATOR_CHILD_FLAG)) {
    serveEmulatorInChild()
} else if (require.main === module) {
    void main(process.argv.slice(2)).then((code) => {
        process.exitCode = code
    })
}
