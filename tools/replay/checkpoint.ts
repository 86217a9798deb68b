/** The replay's checkpoint: which events of one file are done for one target and config, which failed and why. */
// Keyed by the file, the target and the plugin config, so a trial run never counts for a real one and a
// changed config replays everything. Failed events are listed in a JSON Lines file next to it (line, uuid,
// reason; never an email or a property value) and are retried by the next run.
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'

import { readHead } from './input'

/** Identifies the export, so that a checkpoint is never applied to another file or a changed one. */
interface FileFingerprint {
    file: string
    size: number
    /** SHA-256 of the first 64 KiB. */
    head: string
}

interface CheckpointKey extends FileFingerprint {
    /** `emulator <url>` or `intercom <region> <token hash>` (see workspaceKey). */
    target: string
    /** SHA-256 of the plugin config without the token (the token is part of the target). */
    config: string
}

/** `unreadable`: the row itself (not retried: the file is the same); `refused`: Intercom or the plugin said no for good; `failed`: still failing after the retries (Intercom down, network). */
export type FailureKind = 'unreadable' | 'refused' | 'failed'

export interface FailedEvent {
    line: number
    uuid: string
    kind: FailureKind
    reason: string
}

interface CheckpointFile {
    version: 2
    key: CheckpointKey
    /** Every line up to this one is settled (done, or in the failed-events file); then those settled out of order. */
    settledThrough: number
    settledAfter: number[]
    /** The file was read to its end and nothing was left unsettled. */
    readToEnd: boolean
    updatedAt: string
}

export class CheckpointError extends Error {}

const sha256 = (text: string | Buffer): string => createHash('sha256').update(text).digest('hex')

export function fingerprint(file: string): FileFingerprint {
    return { file: path.resolve(file), size: fs.statSync(file).size, head: sha256(readHead(file)) }
}

/** A real workspace's key: the token itself is never stored, only enough of its hash to tell workspaces apart. */
export function workspaceKey(region: string, token: string): string {
    return `intercom ${region} ${sha256(`posthog-intercom replay:${token}`).slice(0, 16)}`
}

/** The plugin config as it shapes what is sent: keys sorted, the token left out. */
export function configDigest(config: Record<string, string>): string {
    const entries = Object.entries(config)
        .filter(([key]) => key !== 'intercomApiKey')
        .sort(([a], [b]) => a.localeCompare(b))
    return sha256(JSON.stringify(entries))
}

/** `<dir>/<file name>.<key hash>`: the checkpoint and its failed-events file. */
export function checkpointPaths(dir: string, key: CheckpointKey): { checkpoint: string; failed: string } {
    const id = sha256(JSON.stringify([key.file, key.size, key.head, key.target, key.config])).slice(0, 12)
    const base = path.join(dir, `${path.basename(key.file)}.${id}`)
    return { checkpoint: `${base}.checkpoint.json`, failed: `${base}.failed.jsonl` }
}

/** Checkpoints of the same file name in `dir` written for another target, config or version of the file. */
export function otherCheckpoints(dir: string, key: CheckpointKey): string[] {
    if (!fs.existsSync(dir)) return []
    const own = path.basename(checkpointPaths(dir, key).checkpoint)
    const prefix = `${path.basename(key.file)}.`
    return fs
        .readdirSync(dir)
        .filter((name) => name.startsWith(prefix) && name.endsWith('.checkpoint.json') && name !== own)
}

function writeAtomically(file: string, text: string): void {
    fs.writeFileSync(`${file}.tmp`, text)
    fs.renameSync(`${file}.tmp`, file)
}

function readFailed(file: string): FailedEvent[] {
    if (!fs.existsSync(file)) return []
    return fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line, index) => {
            try {
                return JSON.parse(line) as FailedEvent
            } catch {
                throw new CheckpointError(
                    `${file}, line ${index + 1}: not a failed-events entry; move the file away.`
                )
            }
        })
}

/** Which lines of one file are settled for one key, and which failed; lines settle out of order (concurrently). */
export class FileState {
    private settledThrough = 0
    private readonly settledAfter = new Set<number>()
    private readonly failures = new Map<number, FailedEvent>()
    /** Lines whose earlier failure is retried in this run. */
    private readonly retrying = new Set<number>()
    /** Whether an earlier run read the file to its end. */
    readonly wasReadToEnd: boolean
    readonly resumed: boolean

    constructor(
        readonly key: CheckpointKey,
        readonly paths: ReturnType<typeof checkpointPaths> | null,
        restart = false
    ) {
        const saved = paths && !restart ? readCheckpointFile(paths.checkpoint, key) : null
        this.resumed = saved !== null
        this.wasReadToEnd = saved?.readToEnd ?? false
        if (!saved || !paths) return
        this.settledThrough = saved.settledThrough
        for (const line of saved.settledAfter) this.settledAfter.add(line)
        for (const failure of readFailed(paths.failed)) {
            this.failures.set(failure.line, failure)
            if (failure.kind !== 'unreadable') this.retrying.add(failure.line)
        }
    }

    /** Lines done (or unreadable) by an earlier run, skipped; asked only of lines this run has not read yet. */
    isDone(line: number): boolean {
        const settled = line <= this.settledThrough || this.settledAfter.has(line)
        return settled && !this.retrying.has(line)
    }

    /** Events that failed earlier and are tried again now. */
    get toRetry(): number {
        return this.retrying.size
    }

    settle(line: number, failure?: FailedEvent): void {
        this.retrying.delete(line)
        if (failure) this.failures.set(line, failure)
        else this.failures.delete(line)
        if (line <= this.settledThrough) return
        this.settledAfter.add(line)
        while (this.settledAfter.delete(this.settledThrough + 1)) this.settledThrough++
    }

    failed(): FailedEvent[] {
        return [...this.failures.values()].sort((a, b) => a.line - b.line)
    }

    /** Every event is delivered, or refused for good with a reason: nothing is left for another run to do. */
    complete(readToEnd: boolean): boolean {
        return (
            readToEnd &&
            this.retrying.size === 0 &&
            this.failed().every((failure) => failure.kind !== 'failed')
        )
    }

    /** Written whole, failed events first: a crash between the two leaves a checkpoint that is behind, never ahead. */
    save(readToEnd: boolean): void {
        if (!this.paths) return
        fs.mkdirSync(path.dirname(this.paths.checkpoint), { recursive: true })
        const failed = this.failed().map((failure) => JSON.stringify(failure))
        writeAtomically(this.paths.failed, failed.length ? `${failed.join('\n')}\n` : '')
        const saved: CheckpointFile = {
            version: 2,
            key: this.key,
            settledThrough: this.settledThrough,
            settledAfter: [...this.settledAfter].sort((a, b) => a - b),
            readToEnd,
            updatedAt: new Date().toISOString(),
        }
        writeAtomically(this.paths.checkpoint, `${JSON.stringify(saved, null, 2)}\n`)
    }
}

function readCheckpointFile(file: string, key: CheckpointKey): CheckpointFile | null {
    if (!fs.existsSync(file)) return null
    let parsed: Partial<CheckpointFile> | null = null
    try {
        parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<CheckpointFile>
    } catch {
        // not JSON: refused below
    }
    const valid =
        parsed?.version === 2 &&
        typeof parsed.settledThrough === 'number' &&
        Array.isArray(parsed.settledAfter) &&
        JSON.stringify(parsed.key) === JSON.stringify(key)
    if (!valid)
        throw new CheckpointError(
            `${file} is not a checkpoint of this replay: move it away or pass --restart.`
        )
    return parsed as CheckpointFile
}
