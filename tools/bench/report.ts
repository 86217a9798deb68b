/** The bench's report: the targets, judged against the workload's own floor, and the printed tables. */
import {
    addCount,
    Column,
    formatCount,
    formatItems,
    formatPercent,
    formatRatio,
    formatTable,
    heading,
    ItemColumn,
    sumCounts,
} from '../lib/report'
import type { BenchOptions, BenchResults } from './bench'
import { CpuMeasurement, ScenarioName, ScenarioResult, SETUP_ROUTE } from './scenarios'

export interface Target {
    label: string
    value: string
    met: boolean
    note: string
}

/** The workload's own floor: every person searched once, every event posted once (1 + people/events). */
export function workloadFloor(options: Pick<BenchOptions, 'events' | 'people'>): number {
    return 1 + Math.min(options.people, options.events) / options.events
}

/** A little above the floor: two workers may look the same new person up at once. */
const FLOOR_SLACK = 1.01
/** Of each full rate-limit window, what a backfill must use at least. */
const WINDOW_USE_TARGET = 0.9
export const WINDOW_LIMIT = 1666

function callsTarget(result: ScenarioResult, options: BenchOptions, others = ''): Target {
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

function lostTarget(result: ScenarioResult): Target {
    return {
        label: `${result.name} events lost = 0`,
        value: String(result.lost),
        met: result.lost === 0,
        note: `${result.stored} of ${result.expected} stored by the emulator`,
    }
}

/** Windows wholly inside the run: the first and the last are cut by the run's start and end. */
function windowTarget(result: ScenarioResult): Target[] {
    const full = result.callsPerWindow.slice(1, -1)
    if (full.length === 0) return []
    const used = full.reduce((sum, calls) => sum + calls, 0) / (full.length * WINDOW_LIMIT)
    return [
        {
            label: `replay uses ≥ ${WINDOW_USE_TARGET * 100}% of each full rate-limit window`,
            value: `${(used * 100).toFixed(1)}%`,
            met: used >= WINDOW_USE_TARGET,
            note: `calls in the ${full.length} windows wholly inside the run: ${full.map(formatCount).join(', ')} of ${formatCount(WINDOW_LIMIT)}`,
        },
    ]
}

/** Each scenario judged against the workload's own floor, so a small run is held to what it can reach. */
export function evaluateTargets(results: ScenarioResult[], options: BenchOptions): Target[] {
    const find = (name: ScenarioName) => results.find((result) => result.name === name)
    const [pluginServer, noCache, replayed] = [find('plugin-server'), find('no-cache'), find('replay')]
    const targets: Target[] = []
    if (pluginServer) {
        const others = noCache ? `; no-cache: ${(noCache.callsPerDelivered ?? 0).toFixed(4)}` : ''
        targets.push(callsTarget(pluginServer, options, others), lostTarget(pluginServer), {
            label: 'plugin-server calls answered 429 < 1%',
            value: formatPercent(pluginServer.rateLimited, pluginServer.calls),
            met: pluginServer.calls === 0 || pluginServer.rateLimited / pluginServer.calls < 0.01,
            note: `${pluginServer.rateLimited} of ${pluginServer.calls} calls`,
        })
    }
    if (replayed)
        targets.push(callsTarget(replayed, options), lostTarget(replayed), ...windowTarget(replayed))
    return targets
}

const micros = (value: number | null): string => (value === null ? 'n/a' : value.toFixed(0))
function right<T>(header: string, cell: (item: T) => string): ItemColumn<T> {
    return { header, align: 'right', cell }
}

/** Calls answered 2xx per delivered event: what the client needed, 429s aside. */
function okCallsPerDelivered(result: ScenarioResult): string {
    const answers = Object.entries(result.callsByRoute).flatMap(([route, statuses]) =>
        route === SETUP_ROUTE ? [] : Object.entries(statuses)
    )
    const ok = answers.reduce((sum, [status, count]) => sum + (status.startsWith('2') ? count : 0), 0)
    return formatRatio(ok, result.stored, 3)
}

const SUMMARY_COLUMNS: ItemColumn<ScenarioResult>[] = [
    { header: 'scenario', cell: (r) => r.name },
    right('delivered', (r) => formatCount(r.stored)),
    right('lost', (r) => formatCount(r.lost)),
    right('calls/delivered', (r) => (r.callsPerDelivered === null ? 'n/a' : r.callsPerDelivered.toFixed(3))),
    right('2xx only', okCallsPerDelivered),
    right(
        '429s (% of calls)',
        (r) => `${formatCount(r.rateLimited)} (${formatPercent(r.rateLimited, r.calls)})`
    ),
    right('setup calls', (r) => formatCount(r.setupCalls)),
    right('events/s', (r) => r.eventsPerSecond.toFixed(0)),
    right('wall s', (r) => r.wallSeconds.toFixed(1)),
]

const CPU_COLUMNS: ItemColumn<ScenarioResult>[] = [
    { header: 'scenario', cell: (r) => r.name },
    right('host µs/event', (r) => micros(r.hostCpuMicrosPerEvent)),
    right('host µs/call', (r) => formatRatio(r.hostCpuMicrosPerEvent * r.events, r.calls, 0)),
    right('emulator µs/call', (r) => micros(r.emulatorCpuMicrosPerCall)),
]

const CPU_PAIR_COLUMNS: ItemColumn<[string, CpuMeasurement]>[] = [
    { header: 'Intercom', cell: ([label]) => label },
    right('index.ts', ([, m]) => m.pluginMicrosPerEvent.toFixed(0)),
    right('POST-only plugin', ([, m]) => m.nullPluginMicrosPerEvent.toFixed(0)),
    right("plugin's own work", ([, m]) => m.ownMicrosPerEvent.toFixed(0)),
]

function routeTable(results: ScenarioResult[]): string[] {
    const rows = results.flatMap((result) =>
        Object.entries(result.callsByRoute)
            .sort()
            .map(([route, statuses]) => {
                const answers = Object.entries(statuses)
                    .sort()
                    .map(([status, count]) => `${status}: ${formatCount(count)}`)
                const label = route === SETUP_ROUTE ? `${route} (setup)` : route
                return [result.name, label, formatCount(sumCounts(statuses)), answers.join(', ')]
            })
    )
    const columns: Column[] = [
        { header: 'scenario' },
        { header: 'route' },
        { header: 'calls', align: 'right' },
    ]
    return formatTable([...columns, { header: 'answers' }], rows, '  ')
}

function queueLines(result: ScenarioResult, options: BenchOptions): string[] {
    const { queueRuns, queued, phaseCpuMicros: cpu } = result
    if (!queueRuns || !queued) return []
    return [
        `    First outcome of every event after ${result.feedSeconds.toFixed(1)} s: ${formatCount(result.delivered - result.deliveredFromQueue)} delivered at once, ${formatCount(queued)} parked in the retry queue.`,
        `    runEveryMinute (every ${options.minuteMs / 1000} s here; 60 s in PostHog) delivered ${queueRuns.map(formatCount).join(', ')} per run:`,
        `    at most one rate-limit window per run, so with PostHog's schedule this queue takes about ${queueRuns.length} minutes to drain.`,
        ...(cpu
            ? [
                  `    Host CPU: ${(cpu.feed / result.events).toFixed(0)} µs/event until every event had an outcome, then ${formatRatio(cpu.drain, result.deliveredFromQueue, 0)} µs per event delivered from the queue.`,
              ]
            : []),
    ]
}

function scenarioNotes(results: ScenarioResult[], options: BenchOptions): string[] {
    return results.flatMap((result) => {
        const gaps = result.repeatedSearchGapMs
        const timing = gaps
            ? ` (median ${gaps.median} ms, max ${formatCount(gaps.max)} ms after the previous search of the same email)`
            : ''
        // Failure reasons with their timestamps masked, so "backing off until <time>" counts as one reason.
        const failures: Record<string, number> = {}
        for (const [reason, count] of Object.entries(result.failed))
            addCount(failures, reason.replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '…'), count)
        return [
            `  ${result.name}: ${result.setup}.`,
            `    Calls per 10 s window (limit 1,666): ${result.callsPerWindow.map(formatCount).join(', ')}.`,
            `    Searches: ${formatCount(result.searchedEmails)} emails, ${formatCount(result.duplicateSearches)} searched again${timing}.`,
            ...queueLines(result, options),
            result.deduplicated > 0 &&
                `    ${formatCount(result.deduplicated)} POSTs were repeats Intercom deduplicated.`,
            result.logLines > 0 &&
                `    Plugin log: ${formatCount(result.logLines)} lines for ${formatCount(result.events)} events.`,
            ...Object.entries(failures)
                .sort(([, a], [, b]) => b - a)
                .map(([reason, count]) => `    Failed ×${formatCount(count)}: ${reason}`),
        ].filter((line) => line !== false)
    })
}

function cpuLines(results: BenchResults, options: BenchOptions): string[] {
    const lines = [
        '  Method: process.cpuUsage() of this process around the work, ÷ events. The host process holds the plugin',
        '  (in its sandbox), node-fetch, the harness, and for no-cache the reference client.',
        options.emulator === 'child'
            ? '  The emulator runs in a child process and reports its own cpuUsage, shown apart.'
            : '  The emulator ran in this process, so host figures include it (emulator µs/call: n/a).',
        '',
        '  In the rate-limited runs above, from the first event to the last delivery (warm-up in fresh sandboxes,',
        '  backing off, the retry queue and its log lines included):',
        ...formatItems(CPU_COLUMNS, results.scenarios, '  '),
    ]
    const cpu = results.cpu
    if (!cpu) return lines
    const pairs: Array<[string, CpuMeasurement]> = [
        ['emulator over HTTP, no rate limit', cpu.http],
        ['stub in this process, no HTTP', cpu.stub],
    ]
    return [
        ...lines,
        '',
        `  The plugin's own work (scenario cpu): host µs per event in steady state (median of ${cpu.passes} passes after a`,
        '  warm-up pass, warm contact cache, one POST per event), index.ts minus a plugin that only POSTs each event:',
        ...formatItems(CPU_PAIR_COLUMNS, pairs, '  '),
    ]
}

export function printResults(results: BenchResults, options: BenchOptions): void {
    const lines = [
        ...heading('Results'),
        ...formatItems(SUMMARY_COLUMNS, results.scenarios, '  '),
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
        ...results.targets.map(
            ({ met, label, value, note }) => `  ${met ? 'met    ' : 'NOT MET'} ${label}: ${value}  (${note})`
        ),
    ]
    for (const line of lines) options.print(line)
}

export function printIntroduction(options: BenchOptions): void {
    const ceiling = Math.floor((WINDOW_LIMIT / 10) * (options.events / (options.events + options.people)))
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
        "  no-cache       not the plugin: a reference client in tools/bench/scenarios.ts making the old plugin's two calls",
        `                 per event (search, then POST /events by id), ${options.workers * options.concurrency} in flight, waiting out spent windows as the`,
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
