/**
 * The fault campaign's variant matrix: each scenario of VARIANT_SCENARIOS (tools/faults/scenarios.ts) run in
 * each of PostHog's six runtimes it applies to, with the real loader (tools/runtime), a private real
 * Redis and the Intercom emulator, and for kill -9 a real worker process. Counts only: what Intercom
 * stored against what was sent, what the runtime or plugin reported, and what is lost (neither).
 */
import { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { Emulator, startEmulator } from '../intercom/emulator'
import { RedisServer, startRedis } from '../lib/redis-server'
import { formatTable } from '../lib/report'
import type { VariantScenario } from '../faults/scenarios'
import {
    BACKLOG_CONFIG,
    BACKLOG_EMAIL,
    backlogEvents,
    countBy,
    drain,
    expireVolatileKeys,
    park,
    reportedStatus,
    runEvents,
    storedReport,
} from './backlog'
import { createRedisCache } from './cache'
import { RuntimeEvent, startVariant, Treatment, VariantRuntime } from './start-variant'
import { VariantId } from './variants'
import { spawnWorker } from './worker'

export interface VariantScenarioResult {
    scenario: string
    variant: VariantId
    /** Events sent through onEvent (nudges included). */
    sent: number
    stored: number
    /** Sent events Intercom does not have. */
    missing: number
    /** Of those, the ones the runtime or the plugin reported (error recorded, skipped or dropped with a reason). */
    reported: number
    /** Missing and reported by nobody. */
    lost: number
    /** Retries Intercom deduplicated: allowed (at least once). */
    deduplicated: number
    unexpected: number
    /** Final statuses of onEvent (delivered, queued, skipped, failed…). */
    statuses: Record<string, number>
    /** Reasons for what was not delivered: runtime errors and the plugin's drop reasons, masked of numbers. */
    reasons: Record<string, number>
    /** Events that failed with a rate-limit error. */
    failedRateLimit: number
    rateLimited: number
    durationMs: number
}

export interface VariantRunOptions {
    /** Use the scenario's reduced size (npm test). */
    small?: boolean
    /** Overrides the scenario's event count. */
    events?: number
}

interface Run {
    scenario: VariantScenario
    variant: VariantId
    events: number
    emulator: Emulator
    redis: RedisServer
}

interface Tally {
    sent: RuntimeEvent[]
    treatments: Treatment[]
    dropped: number
    dropReasons: Record<string, number>
}

const reasonOf = (text: string): string => text.replace(/\d+/g, 'N').slice(0, 120)

function start(run: Run, pluginId = 1): Promise<VariantRuntime> {
    return startVariant(run.variant, {
        config: BACKLOG_CONFIG,
        emulatorUrl: run.emulator.url,
        redisUrl: run.redis.url,
        pluginId,
    })
}

async function withRuntime(run: Run, body: (runtime: VariantRuntime) => Promise<Tally>): Promise<Tally> {
    const runtime = await start(run)
    try {
        return await body(runtime)
    } finally {
        await runtime.teardown()
    }
}

/** Parks the events while Intercom fails, then drains them the variant's way. */
function backlog(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => {
        const events = backlogEvents(run.events, { prefix: run.scenario.name })
        run.emulator.configure({ errorRate: 1 })
        const treatments = await runEvents(runtime, events, run.scenario.concurrency)
        run.emulator.configure({ errorRate: 0 })
        const nudges = backlogEvents(Math.ceil(run.events / 10) + 5, {
            prefix: 'nudge',
            offset: run.events + 10,
        })
        const drained = await drain(runtime, nudges)
        return {
            sent: [...events, ...drained.nudged],
            treatments,
            dropped: drained.dropped,
            dropReasons: drained.droppedByReason,
        }
    })
}

/** Events flow to a healthy Intercom; a third of the way in, Redis is killed and restarted empty. */
function redisRestart(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => {
        const events = backlogEvents(run.events, { prefix: run.scenario.name })
        const third = Math.floor(run.events / 3)
        const before = await runEvents(runtime, events.slice(0, third), run.scenario.concurrency)
        const restart = run.redis.restart({ downMs: 500 })
        const during = await runEvents(runtime, events.slice(third), run.scenario.concurrency)
        await restart
        const drained = await drain(runtime, backlogEvents(20, { prefix: 'nudge', offset: run.events + 10 }))
        return {
            sent: [...events, ...drained.nudged],
            treatments: [...before, ...during],
            dropped: drained.dropped,
            dropReasons: drained.droppedByReason,
        }
    })
}

function exited(child: ChildProcess): Promise<number | null> {
    child.stdout?.resume()
    child.stderr?.resume()
    return new Promise((resolve) => child.once('exit', (code) => resolve(code)))
}

/** Parks a backlog, lets a worker process drain it, kills it with SIGKILL at 35 %, and lets another finish. */
async function killMidDrain(run: Run): Promise<Tally> {
    const dir = mkdtempSync(path.join(tmpdir(), 'faults-kill-'))
    try {
        const events = backlogEvents(run.events, { prefix: run.scenario.name })
        const parked = await withRuntime(run, async (runtime) => ({
            sent: events,
            treatments: await park(runtime, run.emulator, events).then(() => []),
            dropped: 0,
            dropReasons: {},
        }))
        // Variant 4 drains only when events arrive: both workers get the same stream of new events.
        const nudges = backlogEvents(Math.ceil(run.events / 20) + 10, {
            prefix: 'nudge',
            offset: run.events + 10,
        })
        const file = path.join(dir, 'nudges.jsonl')
        writeFileSync(file, nudges.map((event) => JSON.stringify(event)).join('\n'))
        const args = [
            '--variant',
            String(run.variant),
            '--emulator',
            run.emulator.url,
            '--redis',
            run.redis.url,
        ]
        const drainArgs = [...args, '--events', file, '--minutes', '50']
        run.emulator.configure({ latencyMs: 5 })
        const first = spawnWorker(drainArgs)
        // 35 %: not a multiple of a drain batch, so a batch is in flight when the worker dies.
        const target = Math.floor(run.events * 0.35)
        const stop = run.emulator.onRequest(() => {
            if (run.emulator.events().length >= target) first.kill('SIGKILL')
        })
        await exited(first)
        stop()
        run.emulator.configure({ latencyMs: 0 })
        const cache = createRedisCache({ redisUrl: run.redis.url })
        await expireVolatileKeys(cache) // the dead worker's lock outlives it until its TTL
        await cache.close()
        await exited(spawnWorker(drainArgs))
        return { ...parked, sent: [...events, ...nudges] }
    } finally {
        rmSync(dir, { recursive: true, force: true })
    }
}

/** Many events at once at Intercom's rate limit, the benchmark's concurrency. */
function burst(run: Run): Promise<Tally> {
    return withRuntime(run, async (runtime) => {
        const events = backlogEvents(run.events, { prefix: run.scenario.name })
        const treatments = await runEvents(runtime, events, run.scenario.concurrency)
        return { sent: events, treatments, dropped: 0, dropReasons: {} }
    })
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
    const add = (reason: string, n = 1) => (counts[reasonOf(reason)] = (counts[reasonOf(reason)] ?? 0) + n)
    for (const treatment of tally.treatments) {
        if (treatment.status === 'failed') add(treatment.error ?? 'failed')
        const value = treatment.value as { status?: string; reason?: string } | undefined
        if (value?.status === 'skipped') add(`skipped: ${value.reason ?? '?'}`)
    }
    for (const [reason, n] of Object.entries(tally.dropReasons)) add(`dropped: ${reason}`, n)
    return counts
}

export async function runVariantScenario(
    scenario: VariantScenario,
    variant: VariantId,
    options: VariantRunOptions = {}
): Promise<VariantScenarioResult> {
    const events = options.events ?? (options.small ? scenario.smallEvents : scenario.events)
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
        const tally = await RUNNERS[scenario.name]({ scenario, variant, events, emulator, redis })
        const stored = storedReport(emulator, tally.sent)
        const statusCounts = countBy(tally.treatments, reportedStatus)
        const reported = (statusCounts.failed ?? 0) + (statusCounts.skipped ?? 0) + tally.dropped
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
    const variants = [1, 2, 3, 4, 5, 6]
    const cell = (scenario: string, variant: number): string => {
        const r = results.find((x) => x.scenario === scenario && x.variant === variant)
        if (!r) return '-'
        const extra = r.failedRateLimit > 0 ? ` (${r.failedRateLimit} failed 429)` : ''
        return `${r.lost} lost, ${r.missing - r.lost} reported / ${r.sent}${extra}`
    }
    const scenarios = [...new Set(results.map((r) => r.scenario))]
    const columns = [{ header: 'scenario' }, ...variants.map((v) => ({ header: `variant ${v}` }))]
    return formatTable(
        columns,
        scenarios.map((s) => [s, ...variants.map((v) => cell(s, v))])
    ).join('\n')
}
