/** What a replay reports: the running tally, the final summary and its text, and the progress bar. */
import { Presets, SingleBar } from 'cli-progress'

import type { CheckpointCounts } from './replay-checkpoint'
import type { CallCounts } from './replay-fetch'

export type ReplayTargetKind = 'intercom' | 'emulator' | 'dry-run'

export interface QueueCounts {
    /** Delivered later by runEveryMinute. */
    delivered: number
    /** Given up by the plugin's queue (each with its reason under `failed` or `skipped`). */
    dropped: number
    /** Still waiting when the replay ended: sent again on resume. */
    left: number
}

export interface ReplaySummary {
    file: string
    target: ReplayTargetKind
    /** Lines an earlier run had finished, skipped thanks to the checkpoint. */
    resumedAfterLine: number
    /** Rows handed on in this run (read and not skipped by the checkpoint). */
    rowsRead: number
    /** Events Intercom accepted, at once or later from the retry queue. */
    delivered: number
    /** Not triggering events, but their person or company was synced. */
    synced: number
    skipped: Record<string, number>
    /** Events the plugin parked in its retry queue after a transient failure. */
    queued: number
    queue: QueueCounts
    /** onEvent attempts made again after a RetryError. */
    retried: number
    failed: Record<string, number>
    intercomCalls: CallCounts
    /** Set when the replay ran against the emulator. */
    emulator?: { url: string; eventsStored: number; deduplicated: number }
    /** Every line of the file is finished (a checkpoint says so too). */
    complete: boolean
    /** Stopped by a signal (Ctrl-C) before the end. */
    interrupted: boolean
    checkpoint?: string
    durationMs: number
}

function add(counts: Record<string, number>, key: string, by = 1): void {
    counts[key] = (counts[key] ?? 0) + by
}

export function total(counts: Record<string, number>): number {
    return Object.values(counts).reduce((sum, value) => sum + value, 0)
}

/** 0 when nothing failed (no event refused, unreadable, or left undelivered), 1 otherwise. */
export function exitCode(summary: ReplaySummary): 0 | 1 {
    return total(summary.failed) > 0 ? 1 : 0
}

/** The drain report runEveryMinute resolves to (DrainResult in index.ts), read defensively. */
export interface DrainReport {
    delivered: number
    dropped: number
    remaining: number
}

export function drainReportOf(value: unknown): DrainReport {
    const report = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>
    const count = (name: string): number => (typeof report[name] === 'number' ? (report[name] as number) : 0)
    return { delivered: count('delivered'), dropped: count('dropped'), remaining: count('remaining') }
}

export type OutcomeStatus = 'delivered' | 'skipped' | 'queued' | 'synced' | 'unknown'

/** `{status, reason}` of what onEvent resolved to (an Outcome in index.ts). */
export function outcomeOf(value: unknown): { status: OutcomeStatus; reason: string } {
    const outcome = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>
    const status = outcome.status
    const known = status === 'delivered' || status === 'skipped' || status === 'queued' || status === 'synced'
    return {
        status: known ? status : 'unknown',
        reason: typeof outcome.reason === 'string' ? outcome.reason : '',
    }
}

/** Counts as the replay goes; `summary` freezes them. */
export class Tally {
    rows = 0
    delivered = 0
    synced = 0
    queued = 0
    retried = 0
    readonly skipped: Record<string, number> = {}
    readonly failed: Record<string, number> = {}
    readonly queue: QueueCounts = { delivered: 0, dropped: 0, left: 0 }

    outcome(value: unknown): OutcomeStatus {
        const { status, reason } = outcomeOf(value)
        if (status === 'delivered') this.delivered++
        else if (status === 'synced') this.synced++
        else if (status === 'queued') this.queued++
        else if (status === 'skipped') add(this.skipped, reason || 'no reason given')
        // An onEvent that resolves to nothing did its work without telling what: count it as handled.
        else add(this.skipped, 'no outcome reported by the plugin')
        return status
    }

    skip(reason: string): void {
        add(this.skipped, reason)
    }

    fail(message: string, by = 1): void {
        add(this.failed, message, by)
    }

    drained(report: DrainReport): void {
        this.delivered += report.delivered
        this.queue.delivered += report.delivered
        this.queue.dropped += report.dropped
        this.queue.left = report.remaining
    }

    /** Totals for the checkpoint, which adds them to the earlier runs'. */
    counts(intercomCalls: number): CheckpointCounts {
        return {
            rows: this.rows,
            delivered: this.delivered,
            skipped: total(this.skipped),
            queued: this.queued,
            failed: total(this.failed),
            intercomCalls,
        }
    }
}

export function sumCounts(a: CheckpointCounts, b: CheckpointCounts): CheckpointCounts {
    return {
        rows: a.rows + b.rows,
        delivered: a.delivered + b.delivered,
        skipped: a.skipped + b.skipped,
        queued: a.queued + b.queued,
        failed: a.failed + b.failed,
        intercomCalls: a.intercomCalls + b.intercomCalls,
    }
}

// ---------------------------------------------------------------------------------------------------
// Summary text
// ---------------------------------------------------------------------------------------------------

function breakdown(counts: Record<string, number>): string {
    return Object.entries(counts)
        .sort(([, a], [, b]) => b - a)
        .map(([key, count]) => `${count} × ${key}`)
        .join('; ')
}

function row(label: string, count: number, detail = ''): string {
    return `  ${label.padEnd(18)}${String(count).padStart(8)}${detail ? `   ${detail}` : ''}`
}

const TARGET_NAMES: Record<ReplayTargetKind, string> = {
    intercom: 'Intercom',
    emulator: 'the Intercom emulator',
    'dry-run': 'nowhere (dry run: Intercom answered in the process)',
}

export function formatSummary(summary: ReplaySummary): string {
    const seconds = (summary.durationMs / 1000).toFixed(1)
    const state = summary.interrupted
        ? 'interrupted'
        : summary.complete
          ? 'complete'
          : 'stopped before the end'
    const queue = summary.queue
    const lines = [
        `Replay of ${summary.file} to ${TARGET_NAMES[summary.target]}: ${state} in ${seconds} s`,
        row(
            'rows read',
            summary.rowsRead,
            summary.resumedAfterLine > 0 ? `resumed after line ${summary.resumedAfterLine}` : ''
        ),
        row(
            'delivered',
            summary.delivered,
            queue.delivered > 0 ? `${queue.delivered} of them from the retry queue` : ''
        ),
        row('synced', summary.synced),
        row('skipped', total(summary.skipped), breakdown(summary.skipped)),
        row(
            'queued for retry',
            summary.queued,
            `then delivered ${queue.delivered}, dropped ${queue.dropped}, left ${queue.left}`
        ),
        row('retried', summary.retried, 'onEvent attempts repeated after a RetryError'),
        row('failed', total(summary.failed), breakdown(summary.failed)),
        row(
            summary.target === 'dry-run' ? 'Intercom calls *' : 'Intercom calls',
            summary.intercomCalls.total,
            breakdown(summary.intercomCalls.byRoute)
        ),
    ]
    if (summary.target === 'dry-run') lines.push('  * answered in the process: no request left it')
    if (summary.emulator) {
        const { eventsStored, deduplicated } = summary.emulator
        lines.push(`  emulator: ${eventsStored} events stored, ${deduplicated} repeated posts deduplicated`)
    }
    if (summary.checkpoint) lines.push(`  checkpoint: ${summary.checkpoint}`)
    return lines.join('\n')
}

// ---------------------------------------------------------------------------------------------------
// Progress bar
// ---------------------------------------------------------------------------------------------------

export interface Progress {
    update(bytes: number, tally: Tally): void
    stop(): void
}

const SILENT: Progress = { update: () => undefined, stop: () => undefined }

function payload(tally: Tally): Record<string, number> {
    return {
        rows: tally.rows,
        delivered: tally.delivered,
        skipped: total(tally.skipped),
        failed: total(tally.failed),
    }
}

/** A bar over the bytes of the file, on stderr; nothing at all when disabled. */
export function createProgress(
    enabled: boolean,
    totalBytes: number,
    startBytes: number,
    tally: Tally
): Progress {
    if (!enabled) return SILENT
    const bar = new SingleBar(
        {
            stream: process.stderr,
            format: 'replay |{bar}| {percentage}% | {rows} rows | {delivered} delivered | {skipped} skipped | {failed} failed | ETA {eta_formatted}',
            etaBuffer: 50,
        },
        Presets.shades_classic
    )
    bar.start(Math.max(totalBytes, 1), startBytes, payload(tally))
    return {
        update: (bytes, current) => bar.update(Math.min(bytes, totalBytes), payload(current)),
        stop: () => bar.stop(),
    }
}
