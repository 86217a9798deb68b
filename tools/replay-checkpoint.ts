/**
 * The replay's checkpoint: how far into which file every event is finished, so that a stopped replay resumes
 * where it stood. Lines in flight when it stopped are not in it and are sent again, which is safe because
 * Intercom deduplicates events on contact + event_name + created_at.
 */
import { createHash } from 'node:crypto'
import {
    closeSync,
    existsSync,
    openSync,
    readFileSync,
    readSync,
    renameSync,
    statSync,
    writeFileSync,
} from 'node:fs'
import { resolve } from 'node:path'

import type { Position } from './replay-input'

/** Running totals over every run of one file (lines redone after a stop are counted again). */
export interface CheckpointCounts {
    rows: number
    delivered: number
    skipped: number
    queued: number
    failed: number
    intercomCalls: number
}

/** Identifies the export, so that a checkpoint is never applied to another file under the same name. */
export interface FileFingerprint {
    file: string
    size: number
    /** SHA-256 of the first 64 KiB. */
    head: string
}

export interface Checkpoint extends FileFingerprint {
    version: 1
    /** Every line up to this one is finished (for CSV, every record ending on or before it). */
    line: number
    /** Byte offset just after `line`: plain JSON Lines only, where a resume seeks instead of re-reading. */
    offset?: number
    /** True once the whole file was read and every event finished. */
    complete: boolean
    counts: CheckpointCounts
    updatedAt: string
}

export class CheckpointError extends Error {}

const HEAD_BYTES = 64 * 1024

export function emptyCounts(): CheckpointCounts {
    return { rows: 0, delivered: 0, skipped: 0, queued: 0, failed: 0, intercomCalls: 0 }
}

export function fingerprint(file: string): FileFingerprint {
    const path = resolve(file)
    const fd = openSync(path, 'r')
    try {
        const head = Buffer.alloc(HEAD_BYTES)
        const length = readSync(fd, head, 0, HEAD_BYTES, 0)
        const digest = createHash('sha256').update(head.subarray(0, length)).digest('hex')
        return { file: path, size: statSync(path).size, head: digest }
    } finally {
        closeSync(fd)
    }
}

function isCheckpoint(value: unknown): value is Checkpoint {
    const candidate = value as Partial<Checkpoint> | null
    return (
        typeof candidate === 'object' &&
        candidate !== null &&
        candidate.version === 1 &&
        typeof candidate.file === 'string' &&
        typeof candidate.line === 'number' &&
        typeof candidate.head === 'string' &&
        typeof candidate.counts === 'object'
    )
}

/** The checkpoint at `path`, or null when there is none. */
export function readCheckpoint(path: string): Checkpoint | null {
    if (!existsSync(path)) return null
    let parsed: unknown
    try {
        parsed = JSON.parse(readFileSync(path, 'utf8'))
    } catch {
        parsed = undefined
    }
    if (!isCheckpoint(parsed)) {
        throw new CheckpointError(`${path} is not a replay checkpoint: move it away or pass --restart.`)
    }
    return { ...parsed, counts: { ...emptyCounts(), ...parsed.counts } }
}

/** Where to resume `file` from: refuses a checkpoint written for another file, or for this one before it changed. */
export function resumePosition(
    checkpoint: Checkpoint | null,
    current: FileFingerprint,
    path: string
): Position {
    if (!checkpoint) return { line: 0 }
    const sameFile =
        checkpoint.file === current.file &&
        checkpoint.size === current.size &&
        checkpoint.head === current.head
    if (!sameFile) {
        throw new CheckpointError(
            `${path} belongs to ${checkpoint.file === current.file ? 'an earlier version of this file' : checkpoint.file}: ` +
                'pass --restart to replay this file from its first line, or --checkpoint to use another checkpoint file.'
        )
    }
    return { line: checkpoint.line, offset: checkpoint.offset }
}

/** Written whole to a temporary file, then renamed: a crash mid-write never leaves half a checkpoint. */
export function writeCheckpoint(path: string, checkpoint: Checkpoint): void {
    const temporary = `${path}.tmp`
    writeFileSync(temporary, `${JSON.stringify(checkpoint, null, 2)}\n`)
    renameSync(temporary, path)
}
