/** Which files a replay reads, and their records one by one, the format told by the content. */
// JSON Lines (plain, gzip or Brotli, as PostHog's batch exports compress them), Parquet and the CSV of
// PostHog's UI. Records stream with their line (Parquet: row) number, so a 1 GB export never sits in memory
// and the checkpoint can name each event.
import { parse as parseCsv } from 'csv-parse'
import { isUtf8 } from 'node:buffer'
import { closeSync, createReadStream, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import * as path from 'node:path'
import { pipeline, Readable } from 'node:stream'
import * as zlib from 'node:zlib'

import { isRecord } from '../intercom/rules'
import { UsageError } from '../lib/flags'
import { ExportRow, toExportRow, unflattenColumns } from './rows'

export const INPUT_FORMATS = ['jsonl', 'csv', 'parquet'] as const
export type InputFormat = (typeof INPUT_FORMATS)[number]

export interface InputKind {
    format: InputFormat
    compression: 'none' | 'gzip' | 'brotli'
    /** Said to the user when the guess deserves it (Brotli has no signature). */
    note?: string
}

export interface InputRecord {
    /** 1-based line of the file (CSV: the line the record ends on; Parquet: the row number). */
    line: number
    row?: ExportRow
    /** Why the record is not an event; `row` is then absent. */
    error?: string
    /** The uuid when the record has one, even an unreadable one, for the failed-events file. */
    uuid?: string
}

export interface InputSource {
    records: AsyncIterable<InputRecord>
    /** Bytes of the file behind the records read so far (compressed bytes for gzip and Brotli): the progress bar. */
    bytesDone(): number
    size: number
    close(): void
}

/** Raised when a file cannot be read at all (not an export, unknown format): nothing of it was sent. */
export class InputError extends Error {}

// --- Which files: files as given, every export under a folder, or the matches of a glob

const GLOB_CHARS = /[*?[]/
/** The names PostHog gives its exports; other files in a folder (a config, notes) are not exports. */
const EXPORT_NAME = /\.(jsonl|ndjson|csv|parquet)(\.(gz|br))?$/i

/** `**` any folders, `*` any name part, `?` one character, `[abc]` a class; matched on `/`-separated paths. */
function globToRegExp(pattern: string): RegExp {
    let source = ''
    for (let i = 0; i < pattern.length; i++) {
        const char = pattern[i]
        if (char === '*' && pattern[i + 1] === '*') {
            source += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*'
            i += pattern[i + 2] === '/' ? 2 : 1
        } else if (char === '*') source += '[^/]*'
        else if (char === '?') source += '[^/]'
        else if (char === '[') {
            const end = pattern.indexOf(']', i)
            source += end === -1 ? '\\[' : pattern.slice(i, end + 1)
            i = end === -1 ? i : end
        } else source += char.replace(/[.+^${}()|\\]/g, '\\$&')
    }
    return new RegExp(`^${source}$`)
}

/** Every file under `dir` in name order, hidden ones (the checkpoints' folder among them) left out. */
function filesUnder(dir: string): string[] {
    return readdirSync(dir, { withFileTypes: true })
        .filter((entry) => !entry.name.startsWith('.'))
        .sort((a, b) => a.name.localeCompare(b.name))
        .flatMap((entry) => {
            const full = path.join(dir, entry.name)
            if (entry.isDirectory()) return filesUnder(full)
            return entry.isFile() ? [full] : []
        })
}

/** Walks from the folder part of the glob before its first wildcard. */
function globMatches(pattern: string): string[] {
    const normalized = pattern.split(path.sep).join('/')
    const segments = normalized.split('/')
    const wild = segments.findIndex((segment) => GLOB_CHARS.test(segment))
    const base = wild === 0 ? '.' : segments.slice(0, wild).join('/') || '/'
    if (!existsSync(base)) return []
    const slashed = (file: string) => path.resolve(file).split(path.sep).join('/')
    const matcher = globToRegExp(slashed(base) + normalized.slice(base.length))
    return filesUnder(base).filter((file) => matcher.test(slashed(file)))
}

/** The files named by `inputs`, each once, in the order given; a name matching nothing (a typo) is a usage error. */
export function expandInputs(inputs: string[]): string[] {
    const files: string[] = []
    for (const input of inputs) {
        let found: string[]
        if (existsSync(input))
            found = statSync(input).isDirectory()
                ? filesUnder(input).filter((file) => EXPORT_NAME.test(file))
                : [input]
        else if (GLOB_CHARS.test(input)) found = globMatches(input)
        else throw new UsageError(`No such file: ${input}`)
        if (found.length === 0)
            throw new UsageError(
                `No export file (.jsonl, .ndjson, .csv, .parquet, maybe .gz or .br) matches ${input}`
            )
        files.push(...found.map((file) => path.resolve(file)))
    }
    return [...new Set(files)]
}

/** A path as the user would type it: relative to the working folder when inside it. */
export function displayPath(file: string): string {
    const relative = path.relative(process.cwd(), file)
    return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file
}

// --- Detection by content

const HEAD_BYTES = 64 * 1024

/** The first 64 KiB of a file: enough to tell its format, and the checkpoint's fingerprint of it. */
export function readHead(file: string): Buffer {
    const fd = openSync(file, 'r')
    try {
        const head = Buffer.alloc(HEAD_BYTES)
        return head.subarray(0, readSync(fd, head, 0, HEAD_BYTES, 0))
    } finally {
        closeSync(fd)
    }
}

/** Text a person could have written: valid UTF-8 (a sequence cut at the end aside), no control bytes. */
function isText(head: Buffer): boolean {
    const sample = head.subarray(0, Math.max(0, head.length - 3))
    return (
        !sample.some((byte) => byte < 0x09 || (byte > 0x0d && byte < 0x20) || byte === 0x7f) && isUtf8(sample)
    )
}

/** JSON Lines open with `{` (after a BOM and blank space); anything else textual is taken for CSV. */
function textFormat(text: Buffer): InputFormat {
    return /^(\uFEFF)?\s*\{/.test(text.subarray(0, 1024).toString('utf8')) ? 'jsonl' : 'csv'
}

/** The start of a compressed stream, decompressed as far as the head goes (no error for the cut end). */
function inflateHead(head: Buffer, compression: 'gzip' | 'brotli'): Buffer | null {
    try {
        return compression === 'gzip'
            ? zlib.gunzipSync(head, { finishFlush: zlib.constants.Z_SYNC_FLUSH })
            : zlib.brotliDecompressSync(head, { finishFlush: zlib.constants.BROTLI_OPERATION_FLUSH })
    } catch {
        return null
    }
}

/** What `file` holds, from its first bytes: gzip and Parquet by signature, text as JSON Lines or CSV, else Brotli. */
export function detectInput(file: string, format?: InputFormat): InputKind {
    const head = readHead(file)
    if (head.length === 0) return { format: format ?? 'jsonl', compression: 'none' }
    // The signatures: Parquet's `PAR1`, gzip's 1f 8b.
    if (head.subarray(0, 4).toString('latin1') === 'PAR1') return { format: 'parquet', compression: 'none' }
    if (head[0] === 0x1f && head[1] === 0x8b) {
        const inner = inflateHead(head, 'gzip')
        return { format: format ?? (inner ? textFormat(inner) : 'jsonl'), compression: 'gzip' }
    }
    if (isText(head)) return { format: format ?? textFormat(head), compression: 'none' }
    const inner = inflateHead(head, 'brotli')
    if (inner && inner.length > 0 && isText(inner)) {
        const detected = format ?? textFormat(inner)
        return {
            format: detected,
            compression: 'brotli',
            note: `not text, gzip or Parquet: read as Brotli-compressed ${detected === 'csv' ? 'CSV' : 'JSON Lines'} (Brotli files carry no signature)`,
        }
    }
    throw new InputError(
        'not a PostHog export the replay can read: neither JSON Lines nor CSV (plain, gzip or Brotli) nor Parquet'
    )
}

// --- Records

function recordOf(raw: unknown, line: number): InputRecord {
    const row = toExportRow(raw)
    const uuid = isRecord(raw) ? raw.uuid : undefined
    const known = typeof uuid === 'string' && uuid !== '' ? uuid : undefined
    return typeof row === 'string'
        ? { line, error: row, uuid: known }
        : { line, row, uuid: row.uuid || known }
}

/** Splits a byte stream on `\n`; `\n` never occurs inside a multi-byte UTF-8 sequence, so each line decodes alone. */
async function* splitLines(source: AsyncIterable<Buffer>): AsyncGenerator<string> {
    let carry: Buffer = Buffer.alloc(0)
    for await (const chunk of source) {
        const data = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk
        let start = 0
        for (let newline = data.indexOf(0x0a); newline !== -1; newline = data.indexOf(0x0a, start)) {
            yield data.toString('utf8', start, newline).replace(/\r$/, '')
            start = newline + 1
        }
        carry = data.subarray(start)
    }
    if (carry.length > 0) yield carry.toString('utf8').replace(/\r$/, '')
}

async function* jsonLinesRecords(lines: AsyncIterable<string>): AsyncGenerator<InputRecord> {
    let line = 0
    for await (const raw of lines) {
        line++
        // A BOM (Windows tools write one) would make the first line unreadable JSON.
        const text = line === 1 ? raw.replace(/^\uFEFF/, '') : raw
        if (text.trim() === '') continue
        let parsed: unknown
        try {
            parsed = JSON.parse(text)
        } catch {
            yield { line, error: 'not valid JSON', uuid: /"uuid"\s*:\s*"([^"]{1,100})"/.exec(text)?.[1] }
            continue
        }
        yield recordOf(parsed, line)
    }
}

type CsvItem = { record: Record<string, string>; info: { lines: number } }
type CsvSkip = { lines?: number; message: string }

/**
 * Records of the UI's CSV; one csv-parse cannot read (a stray quote, a wrong column count) is reported with its
 * line. The parser runs ahead, so its skips wait for the records before them: the checkpoint needs lines in order.
 */
async function* csvRecords(text: Readable): AsyncGenerator<InputRecord> {
    const options = {
        columns: true,
        bom: true,
        info: true,
        skip_empty_lines: true,
        skip_records_with_error: true,
    }
    const parser = parseCsv(options)
    const skips: CsvSkip[] = []
    parser.on('skip', (error: CsvSkip) => skips.push(error))
    pipeline(text, parser, () => undefined)
    const skipsBefore = function* (line: number): Generator<InputRecord> {
        skips.sort((a, b) => (a.lines ?? 0) - (b.lines ?? 0))
        while (skips.length > 0 && (skips[0].lines ?? 0) < line) {
            const { lines, message } = skips.shift() as CsvSkip
            yield { line: lines ?? 0, error: `unreadable CSV record: ${message.replace(/:.*$/, '')}` }
        }
    }
    for await (const { record, info } of parser as AsyncIterable<CsvItem>) {
        yield* skipsBefore(info.lines)
        yield recordOf(unflattenColumns(record), info.lines)
    }
    yield* skipsBefore(Infinity)
}

// --- Parquet, through hyparquet

/** The part of hyparquet used here (its types ship as an ES module that a CommonJS build cannot name). */
interface Hyparquet {
    asyncBufferFromFile(file: string): Promise<unknown>
    parquetMetadataAsync(file: unknown): Promise<{ row_groups: Array<{ num_rows: bigint | number }> }>
    parquetReadObjects(options: Record<string, unknown>): Promise<Array<Record<string, unknown>>>
}

/** hyparquet is an ES module: Node's own require loads it (≥ 20.19), jest's would not, so Node's is asked for. */
function loadHyparquet(): Hyparquet {
    try {
        const nodeModule = process.getBuiltinModule?.('node:module') ?? { createRequire }
        return nodeModule.createRequire(__filename)('hyparquet') as Hyparquet
    } catch (error) {
        throw new InputError(`reading Parquet needs Node 20.19 or newer: ${(error as Error).message}`)
    }
}

/** Row group by row group (at most a few hundred thousand rows in a batch export); `onEnd` once all are out. */
async function* parquetRecords(file: string, onEnd: () => void): AsyncGenerator<InputRecord> {
    const hyparquet = loadHyparquet()
    const buffer = await hyparquet.asyncBufferFromFile(file)
    const metadata = await hyparquet.parquetMetadataAsync(buffer)
    let rowStart = 0
    for (const group of metadata.row_groups) {
        const rowEnd = rowStart + Number(group.num_rows)
        const rows = await hyparquet.parquetReadObjects({ file: buffer, metadata, rowStart, rowEnd })
        for (const [index, raw] of rows.entries()) yield recordOf(raw, rowStart + index + 1)
        rowStart = rowEnd
    }
    onEnd()
}

// --- Opening a file

function decompressed(raw: Readable, compression: InputKind['compression']): Readable {
    if (compression === 'none') return raw
    const inflate = compression === 'gzip' ? zlib.createGunzip() : zlib.createBrotliDecompress()
    pipeline(raw, inflate, () => undefined) // an error reaches the reader through `inflate`
    return inflate
}

/** Opens an export for streaming, every record from the first. */
export function openInput(file: string, kind: InputKind): InputSource {
    const size = statSync(file).size
    if (kind.format === 'parquet') {
        let done = 0
        const records = parquetRecords(file, () => (done = size))
        return { records, bytesDone: () => done, size, close: () => undefined }
    }
    const raw = createReadStream(file)
    const decoded = decompressed(raw, kind.compression)
    const records = kind.format === 'csv' ? csvRecords(decoded) : jsonLinesRecords(splitLines(decoded))
    return {
        records,
        bytesDone: () => raw.bytesRead,
        size,
        close: () => {
            decoded.destroy()
            raw.destroy()
        },
    }
}
