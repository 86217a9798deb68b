/** What a replay reports: the tally of each file, the summary with what to do next, the exit code, and the progress bar. */
import { Presets, SingleBar } from 'cli-progress'

import { isRecord } from '../intercom/rules'

import type { FailedEvent, FailureKind } from './checkpoint'
import type { CallCounts } from './fetch'
import { addCount, sortedCounts, sumCounts } from '../lib/report'
import { displayPath, InputKind } from './input'

export type ReplayTargetKind = 'intercom' | 'emulator' | 'dry-run'

/** How far one file got. */
export interface FileSummary {
    file: string
    kind?: InputKind
    /** Events done by earlier runs for this target and config, skipped. */
    doneEarlier: number
    retriedFromEarlier: number
    /** Records handed to the plugin in this run. */
    rowsRead: number
    delivered: number
    /** Not triggering events, but their person or company was synced. */
    synced: number
    skipped: Record<string, number>
    /** onEvent attempts made again after a RetryError. */
    retried: number
    /** Events not delivered, by kind, over every run (see the failed-events file). */
    failed: Record<FailureKind, number>
    /** Failure reasons of this run, by reason. */
    reasons: Record<string, number>
    /** The first failures of this run (line, uuid, reason), for the summary. */
    firstFailures: FailedEvent[]
    /** The whole file was read and every record settled in this run or before. */
    readToEnd: boolean
    /** Every event delivered or refused for good: nothing left for another run. */
    complete: boolean
    /** Why reading stopped before the end (limit, interruption, Intercom unreachable). */
    stoppedBecause?: string
    checkpoint?: string
    failedFile?: string
    /** Set when the file could not be read at all. */
    error?: string
}

export interface ReplaySummary {
    target: ReplayTargetKind
    files: FileSummary[]
    intercomCalls: CallCounts
    emulator?: { url: string; eventsStored: number; deduplicated: number }
    interrupted: boolean
    durationMs: number
}

/** A file's summary before its run. */
export function emptyFileSummary(file: string): FileSummary {
    return {
        file,
        doneEarlier: 0,
        retriedFromEarlier: 0,
        rowsRead: 0,
        delivered: 0,
        synced: 0,
        skipped: {},
        retried: 0,
        failed: { unreadable: 0, refused: 0, failed: 0 },
        reasons: {},
        firstFailures: [],
        readToEnd: false,
        complete: false,
    }
}

/** 0 when every event of every file is delivered or refused for good with a reason; 1 while any is left; 130 when interrupted. */
export function exitCode(summary: ReplaySummary): 0 | 1 | 130 {
    if (summary.interrupted) return 130
    return summary.files.every((file) => file.complete) ? 0 : 1
}

const SHOWN_FAILURES = 5

const OUTCOMES = ['delivered', 'skipped', 'queued', 'synced'] as const

/** `{status, reason}` of what onEvent resolved to (an Outcome in index.ts), read defensively. */
export function outcomeOf(value: unknown): { status: (typeof OUTCOMES)[number] | 'unknown'; reason: string } {
    const { status, reason } = isRecord(value) ? value : {}
    const known = OUTCOMES.find((name) => name === status)
    return { status: known ?? 'unknown', reason: typeof reason === 'string' ? reason : '' }
}

export function countSkip(file: FileSummary, reason: string): void {
    addCount(file.skipped, reason || 'no reason given')
}

export function countFailure(file: FileSummary, failure: FailedEvent): void {
    addCount(file.reasons, failure.reason)
    if (file.firstFailures.length < SHOWN_FAILURES) file.firstFailures.push(failure)
}

/** Failures over every run, by kind, from the checkpoint's list. */
export function failedByKind(failures: FailedEvent[]): Record<FailureKind, number> {
    const counts = { unreadable: 0, refused: 0, failed: 0 }
    for (const failure of failures) counts[failure.kind]++
    return counts
}

// --- Summary text

const breakdown = (counts: Record<string, number>): string =>
    sortedCounts(counts)
        .map(([key, count]) => `${count} × ${key}`)
        .join('; ')

function row(label: string, count: number, detail = ''): string {
    return `  ${label.padEnd(18)}${String(count).padStart(8)}${detail ? `   ${detail}` : ''}`
}

const TARGET_NAMES: Record<ReplayTargetKind, string> = {
    intercom: 'Intercom',
    emulator: 'the Intercom emulator',
    'dry-run': 'nowhere (dry run: Intercom answered in the process)',
}

function kindLabel(kind: InputKind | undefined): string {
    if (!kind) return ''
    const format = { jsonl: 'JSON Lines', csv: 'CSV', parquet: 'Parquet' }[kind.format]
    return kind.compression === 'none' ? format : `${format}, ${kind.compression}`
}

function fileState(file: FileSummary): string {
    if (file.error) return 'not read'
    if (file.complete) return 'complete'
    return file.stoppedBecause ? `stopped: ${file.stoppedBecause}` : 'events left to deliver'
}

function fileLines(file: FileSummary): string[] {
    const earlier =
        file.doneEarlier > 0 || file.retriedFromEarlier > 0
            ? `${file.doneEarlier} done by earlier runs, ${file.retriedFromEarlier} earlier failures retried`
            : ''
    const notDelivered = sumCounts(file.failed)
    const lines = [
        `${displayPath(file.file)} (${kindLabel(file.kind)}): ${fileState(file)}`,
        row('rows read', file.rowsRead, earlier),
        row('delivered', file.delivered),
        row('synced', file.synced),
        row('skipped', sumCounts(file.skipped), breakdown(file.skipped)),
        row('retried', file.retried, file.retried ? 'onEvent attempts repeated after a RetryError' : ''),
        row('not delivered', notDelivered, breakdown(file.reasons)),
    ]
    if (file.error) lines.push(`  ${file.error}`)
    for (const { line, uuid, kind, reason } of file.firstFailures) {
        lines.push(`  line ${line}${uuid ? ` (uuid ${uuid})` : ''}: ${kind}: ${reason}`)
    }
    const more = sumCounts(file.reasons) - file.firstFailures.length
    if (more > 0) lines.push(`  ... and ${more} more`)
    if (file.failedFile && notDelivered > 0) lines.push(`  all failed events: ${file.failedFile}`)
    return lines
}

/** What the user should do now, one line per situation, most urgent first. */
function nextSteps(summary: ReplaySummary): string[] {
    const files = summary.files
    const sum = (kind: FailureKind): number => files.reduce((n, file) => n + file.failed[kind], 0)
    const [failed, refused, unreadable] = [sum('failed'), sum('refused'), sum('unreadable')]
    const stopped = files.filter((file) => !file.readToEnd)
    const target = summary.target
    const steps = [
        stopped.length > 0 &&
            `${stopped.length} file(s) not read to the end (${stopped.map((file) => file.stoppedBecause ?? file.error ?? 'stopped').join('; ')}): run the same command again to go on from where each stopped.`,
        failed > 0 &&
            `${failed} event(s) could not be delivered (reasons above; each with its line and uuid in the failed-events file): run the same command again once the cause is gone, and only they are retried.`,
        refused > 0 &&
            `${refused} event(s) were refused for good (reasons above and in the failed-events file): fix the cause (Intercom's message says what) and run the same command to retry them, or leave them.`,
        unreadable > 0 &&
            `${unreadable} row(s) could not be read (lines above): they are not retried; fix the export to send them.`,
        target === 'dry-run' &&
            'Dry run: nothing was sent. Run without --dry-run, with INTERCOM_API_KEY set, to send.',
        target === 'emulator' &&
            'Emulator run: nothing reached Intercom. Run without --emulator, with INTERCOM_API_KEY set, to send.',
    ].filter((step): step is string => Boolean(step))
    return steps.length > 0
        ? steps
        : ['Nothing left to do: every event was delivered or skipped for the reason shown.']
}

export function formatSummary(summary: ReplaySummary): string {
    const seconds = (summary.durationMs / 1000).toFixed(1)
    const state = summary.interrupted ? 'interrupted' : exitCode(summary) === 0 ? 'complete' : 'not complete'
    const lines = [
        `Replay to ${TARGET_NAMES[summary.target]}: ${state} in ${seconds} s, ${summary.files.length} file(s)`,
    ]
    for (const file of summary.files) lines.push(...fileLines(file))
    const { total, byRoute } = summary.intercomCalls
    const dryRun = summary.target === 'dry-run'
    lines.push(row(dryRun ? 'Intercom calls *' : 'Intercom calls', total, breakdown(byRoute)))
    if (dryRun) lines.push('  * answered in the process: no request left it')
    if (summary.emulator) {
        const { eventsStored, deduplicated } = summary.emulator
        lines.push(`  emulator: ${eventsStored} events stored, ${deduplicated} repeated posts deduplicated`)
    }
    lines.push('Next:', ...nextSteps(summary).map((step) => `  - ${step}`))
    return lines.join('\n')
}

// --- Progress bar

interface Progress {
    update(bytes: number, file: FileSummary): void
    stop(): void
}

const SILENT: Progress = { update: () => undefined, stop: () => undefined }

const payload = (file: FileSummary) => ({
    name: displayPath(file.file),
    rows: file.rowsRead,
    delivered: file.delivered,
    failed: sumCounts(file.reasons),
})

/** A bar over the bytes of one file, on stderr; nothing at all when disabled. */
export function createProgress(enabled: boolean, totalBytes: number, file: FileSummary): Progress {
    if (!enabled) return SILENT
    const bar = new SingleBar(
        {
            stream: process.stderr,
            format: '{name} |{bar}| {percentage}% | {rows} rows | {delivered} delivered | {failed} not delivered | ETA {eta_formatted}',
            etaBuffer: 50,
        },
        Presets.shades_classic
    )
    bar.start(Math.max(totalBytes, 1), 0, payload(file))
    return {
        update: (bytes, current) => bar.update(Math.min(bytes, totalBytes), payload(current)),
        stop: () => bar.stop(),
    }
}
