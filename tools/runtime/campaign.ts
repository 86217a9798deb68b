/** The fault campaign's variant matrix: each of VARIANT_SCENARIOS in each PostHog runtime it applies to.
 * Each runs with the real loader (tools/runtime), a private real Redis and the Intercom emulator, and for
 * kill -9 a real worker process. Counts only: what Intercom stored against what was sent, what the runtime
 * or plugin reported, and what is lost (neither).
 */
import { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { Emulator, startEmulator } from '../intercom/emulator'
import { RedisServer, startRedis } from '../lib/redis-server'
import { addCount, formatTable } from '../lib/report'
import type { VariantScenario } from '../faults/scenarios'
import {
    BACKLOG_CONFIG,
    BACKLOG_EMAIL,
    backlogEvents,
    countBy,
    drain,
    DrainReport,
    expireVolatileKeys,
    park,
    reportedStatus,
    runEvents,
    storedReport,
    StoredReport,
} from './backlog'
import { createRedisCache } from './cache'
import { RuntimeEvent, startVariant, Treatment, VariantRuntime } from './start-variant'
import { VARIANT_IDS, VariantId } from './variants'
import { spawnWorker } from './worker'

/** `missing`, `unexpected` and `deduplicated` as storedReport counts them against what was sent. */
export interface VariantScenarioResult extends Omit<StoredReport, 'expected'> {
    scenario: string
    variant: VariantId
    /** Events sent through onEvent (nudges included). */
    sent: number
    stored: number
    /** Of the missing, those the runtime or the plugin reported (an error, or skipped or dropped with a reason). */
    reported: number
    /** Missing and reported by nobody. */
    lost: number
    /** Final statuses of onEvent (delivered, queued, skipped, failed…). */
    statuses: Record<string, number>
    /** Reasons for what was not delivered: runtime errors and the plugin's drop reasons, masked of numbers. */
    reasons: Record<string, number>
    /** Events that failed with a rate-limit error. */
    failedRateLimit: number
    rateLimited: number
    durationMs: number
}

interface Run {
    scenario: VariantScenario
    variant: VariantId
    /** The scenario's events (uuids prefixed with its name). */
    events: RuntimeEvent[]
    emulator: Emulator
    redis: RedisServer
}

/** What a run sent and how the runtime treated it; `drained` where it ended with a drain. */
interface Tally {
    sent: RuntimeEvent[]
    treatments: Treatment[]
    drained?: DrainReport
}

/** `count` new events that come after the scenario's, to make a runtime without runEveryMinute drain. */
const nudges = (run: Run, count: number) =>
    backlogEvents(count, { prefix: 'nudge', offset: run.events.length + 10 })

async function withRuntime(run: Run, body: (runtime: VariantRuntime) => Promise<Tally>): Promise<Tally> {
    const runtime = await startVariant(run.variant, {
        config: BACKLOG_CONFIG,
        emulatorUrl: run.emulator.url,
        redisUrl: run.redis.url,
    })
    try {
        return await body(runtime)
    } finally {
        await runtime.teardown()
    }
}

/** Parks the events while Intercom fails, then drains them the variant's way. */
function backlog(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => {
        run.emulator.configure({ errorRate: 1 })
        const treatments = await runEvents(runtime, run.events, run.scenario.concurrency)
        run.emulator.configure({ errorRate: 0 })
        const drained = await drain(runtime, nudges(run, Math.ceil(run.events.length / 10) + 5))
        return { sent: [...run.events, ...drained.nudged], treatments, drained }
    })
}

/** Events flow to a healthy Intercom; a third of the way in, Redis is killed and restarted empty. */
function redisRestart(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => {
        const third = Math.floor(run.events.length / 3)
        const before = await runEvents(runtime, run.events.slice(0, third), run.scenario.concurrency)
        const restart = run.redis.restart({ downMs: 500 })
        const during = await runEvents(runtime, run.events.slice(third), run.scenario.concurrency)
        await restart
        const drained = await drain(runtime, nudges(run, 20))
        return { sent: [...run.events, ...drained.nudged], treatments: [...before, ...during], drained }
    })
}

function exited(child: ChildProcess): Promise<number | null> {
    child.stdout?.resume()
    child.stderr?.resume()
    return new Promise((resolve) => child.once('exit', (code) => resolve(code)))
}

/** Parks a backlog, lets a worker process drain it, kills it with SIGKILL at 35 %, and lets another finish. */
async function killMidDrain(run: Run): Promise<Tally> {
    const { emulator, redis } = run
    const dir = mkdtempSync(path.join(tmpdir(), 'faults-kill-'))
    try {
        await withRuntime(run, async (runtime) => {
            await park(runtime, emulator, run.events)
            return { sent: run.events, treatments: [] }
        })
        // Variant 4 drains only when events arrive: both workers get the same stream of new events.
        const sent = nudges(run, Math.ceil(run.events.length / 20) + 10)
        const file = path.join(dir, 'nudges.jsonl')
        writeFileSync(file, sent.map((event) => JSON.stringify(event)).join('\n'))
        const args = ['--variant', String(run.variant), '--emulator', emulator.url, '--redis', redis.url]
        const drainArgs = [...args, '--events', file, '--minutes', '50']
        emulator.configure({ latencyMs: 5 })
        const first = spawnWorker(drainArgs)
        // 35 %: not a multiple of a drain batch, so a batch is in flight when the worker dies.
        const target = Math.floor(run.events.length * 0.35)
        const stop = emulator.onRequest(() => {
            if (emulator.events().length >= target) first.kill('SIGKILL')
        })
        await exited(first)
        stop()
        emulator.configure({ latencyMs: 0 })
        const cache = createRedisCache({ redisUrl: redis.url })
        await expireVolatileKeys(cache) // the dead worker's lock outlives it until its TTL
        await cache.close()
        await exited(spawnWorker(drainArgs))
        return { sent: [...run.events, ...sent], treatments: [] }
    } finally {
        rmSync(dir, { recursive: true, force: true })
    }
}

/** Many events at once at Intercom's rate limit, the benchmark's concurrency. */
function burst(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => ({
        sent: run.events,
        treatments: await runEvents(runtime, run.events, run.scenario.concurrency),
    }))
}

const RUNNERS: Record<VariantScenario['name'], (run: Run) => Promise<Tally>> = {
    'backlog-1000': backlog,
    'kill-9-mid-drain': killMidDrain,
    'redis-restart': redisRestart,
    'queue-full-10000': backlog,
    'burst-10000-rate-limit': burst,
}

function reasons(tally: Tally): Record<string, number> {
    const counts: Record<string, number> = {}
    const add = (text: string, n = 1) => {
        const reason = text.replace(/\d+/g, 'N').slice(0, 120) // masked of numbers, so alike reasons add up
        addCount(counts, reason, n)
    }
    for (const treatment of tally.treatments) {
        if (treatment.status === 'failed') add(treatment.error ?? 'failed')
        const value = treatment.value as { status?: string; reason?: string } | undefined
        if (value?.status === 'skipped') add(`skipped: ${value.reason ?? '?'}`)
    }
    for (const [reason, n] of Object.entries(tally.drained?.droppedByReason ?? {}))
        add(`dropped: ${reason}`, n)
    return counts
}

/** One scenario in one variant; `small`: its reduced size (npm test); `events` overrides its event count. */
export async function runVariantScenario(
    scenario: VariantScenario,
    variant: VariantId,
    options: { small?: boolean; events?: number } = {}
): Promise<VariantScenarioResult> {
    const count = options.events ?? (options.small ? scenario.smallEvents : scenario.events)
    const rateLimit = (options.small ? scenario.smallRateLimit : scenario.rateLimit) ?? 1_000_000
    const startedAt = Date.now()
    const [emulator, redis] = await Promise.all([
        startEmulator({
            rateLimit,
            windowSeconds: scenario.windowSeconds ?? 10,
            tokens: [BACKLOG_CONFIG.intercomApiKey],
        }),
        startRedis(),
    ])
    try {
        emulator.addContact({ email: BACKLOG_EMAIL, role: 'user' })
        const events = backlogEvents(count, { prefix: scenario.name })
        const tally = await RUNNERS[scenario.name]({ scenario, variant, events, emulator, redis })
        const stored = storedReport(emulator, tally.sent)
        const statusCounts = countBy(tally.treatments, reportedStatus)
        const reported =
            (statusCounts.failed ?? 0) + (statusCounts.skipped ?? 0) + (tally.drained?.dropped ?? 0)
        return {
            scenario: scenario.name,
            variant,
            sent: tally.sent.length,
            stored: stored.expected - stored.missing,
            missing: stored.missing,
            reported: Math.min(reported, stored.missing),
            lost: Math.max(stored.missing - reported, 0),
            deduplicated: stored.deduplicated,
            unexpected: stored.unexpected,
            statuses: statusCounts,
            reasons: reasons(tally),
            failedRateLimit: tally.treatments.filter(
                (t) => t.status === 'failed' && /429|rate.?limit/i.test(t.error ?? '')
            ).length,
            rateLimited: emulator.stats().rateLimited,
            durationMs: Date.now() - startedAt,
        }
    } finally {
        await Promise.all([emulator.close(), redis.stop()])
    }
}

/** The matrix: one row per scenario, one column per variant, what was lost and reported of what was sent. */
export function formatVariantMatrix(results: readonly VariantScenarioResult[]): string {
    const cell = (scenario: string, variant: number): string => {
        const r = results.find((x) => x.scenario === scenario && x.variant === variant)
        if (!r) return '-'
        const extra = r.failedRateLimit > 0 ? ` (${r.failedRateLimit} failed 429)` : ''
        return `${r.lost} lost, ${r.missing - r.lost} reported / ${r.sent}${extra}`
    }
    const scenarios = [...new Set(results.map((r) => r.scenario))]
    const columns = [{ header: 'scenario' }, ...VARIANT_IDS.map((v) => ({ header: `variant ${v}` }))]
    return formatTable(
        columns,
        scenarios.map((s) => [s, ...VARIANT_IDS.map((v) => cell(s, v))])
    ).join('\n')
}
