/**
 * Reads PostHog event exports for the replay: JSON Lines (plain or gzip, as batch exports and file downloads
 * write them) and the CSV of PostHog's UI. Records are streamed one by one with their position in the file,
 * so a 1 GB export never sits in memory and a checkpoint can say exactly how far a replay got.
 */
import { parse as parseCsv } from 'csv-parse'
import { closeSync, createReadStream, openSync, readSync, ReadStream, statSync } from 'node:fs'
import { pipeline, Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'

export type InputFormat = 'jsonl' | 'csv'

/** A point between lines: `line` lines are behind it; `offset` is its byte offset (plain JSON Lines only). */
export interface Position {
    line: number
    offset?: number
}

/** One exported event, as the replay hands it on; every field of the export not named here is ignored. */
export interface ExportRow {
    uuid: string
    event: string
    distinct_id: string
    properties: Record<string, unknown>
    /** ISO 8601 in UTC, or whatever the export held when it is not a ClickHouse timestamp. */
    timestamp?: string
    person_id?: string
    person_properties?: Record<string, unknown>
    team_id?: number
}

export interface InputRecord {
    /** Where the file stands just before this record and just after it. */
    before: Position
    after: Position
    row?: ExportRow
    /** Why the record is not an event; `row` is then absent. */
    error?: string
}

export interface InputSource {
    format: InputFormat
    records: AsyncIterable<InputRecord>
    /**
     * Bytes of the file behind the records read so far, for the progress bar. Exact for plain files; for gzip,
     * the compressed bytes read, which run a chunk ahead (the decompressed offsets do not match the file size).
     */
    bytesDone(): number
    size: number
    close(): void
}

type JsonObject = Record<string, unknown>

// ---------------------------------------------------------------------------------------------------
// Row normalisation: one shape out of the export's several
// ---------------------------------------------------------------------------------------------------

function isObject(value: unknown): value is JsonObject {
    return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** `properties` and `person_properties` come as objects in JSON exports and as JSON text in CSV. */
function objectField(value: unknown, name: string): JsonObject | string {
    if (value === undefined || value === null || value === '') return {}
    if (isObject(value)) return value
    if (typeof value === 'string') {
        try {
            const parsed: unknown = JSON.parse(value)
            if (isObject(parsed)) return parsed
        } catch {
            // reported below
        }
    }
    return `${name} is not a JSON object`
}

const CLICKHOUSE_TIMESTAMP = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?$/

/**
 * ClickHouse writes `2024-05-01 12:00:00.123456`, in UTC but without a zone, which Date.parse would read as
 * local time. PostHog turns it into ISO 8601 UTC before a plugin sees it (clickHouseTimestampToISO); so does
 * the replay. Anything else is passed on untouched for the plugin to judge.
 */
export function normalizeTimestamp(value: unknown): string | undefined {
    if (typeof value === 'number' && Number.isFinite(value)) return String(value)
    if (typeof value !== 'string' || value.trim() === '') return undefined
    const match = CLICKHOUSE_TIMESTAMP.exec(value.trim())
    if (!match) return value.trim()
    const fraction = (match[3] ?? '.000').slice(0, 4).padEnd(4, '0')
    return `${match[1]}T${match[2]}${fraction}Z`
}

/** CSV exports flatten nested columns (`properties.plan`); some prefix every column with `*.`. */
function unflatten(raw: JsonObject): JsonObject {
    const flat: JsonObject = {}
    const nested: Record<'properties' | 'person_properties', JsonObject> = {
        properties: {},
        person_properties: {},
    }
    for (const [name, value] of Object.entries(raw)) {
        const key = name.startsWith('*.') ? name.slice(2) : name
        const inner = /^(properties|person_properties|person\.properties)\.(.+)$/.exec(key)
        if (inner && value !== '') {
            nested[inner[1] === 'properties' ? 'properties' : 'person_properties'][inner[2]] = value
        } else if (!inner) {
            flat[key] = value
        }
    }
    for (const field of ['properties', 'person_properties'] as const) {
        if (Object.keys(nested[field]).length > 0) {
            const whole = objectField(flat[field], field)
            flat[field] = typeof whole === 'string' ? whole : { ...whole, ...nested[field] }
        }
    }
    return flat
}

function optionalString(value: unknown): string | undefined {
    return (typeof value === 'string' && value !== '') || typeof value === 'number'
        ? String(value)
        : undefined
}

function personPropertiesOf(raw: JsonObject): JsonObject | string | undefined {
    // Batch exports have `person_properties`; some tools nest them as `person.properties`.
    const value = raw.person_properties ?? (isObject(raw.person) ? raw.person.properties : undefined)
    return value === undefined || value === null || value === ''
        ? undefined
        : objectField(value, 'person_properties')
}

/** The export row as the replay needs it, or the reason it cannot be one. */
export function toExportRow(raw: unknown): ExportRow | string {
    if (!isObject(raw)) return 'not a JSON object'
    const flat = unflatten(raw)
    const event = optionalString(flat.event)
    if (!event) return 'no event name'
    const properties = objectField(flat.properties, 'properties')
    if (typeof properties === 'string') return properties
    const personProperties = personPropertiesOf(flat)
    if (typeof personProperties === 'string') return personProperties
    const teamId = Number(flat.team_id)
    return {
        uuid: optionalString(flat.uuid) ?? '',
        event,
        distinct_id: optionalString(flat.distinct_id) ?? '',
        properties,
        // A missing timestamp would become "now" in the plugin, and "now" differs on every run.
        timestamp: normalizeTimestamp(flat.timestamp) ?? normalizeTimestamp(flat.created_at),
        person_id: optionalString(flat.person_id),
        person_properties: personProperties,
        team_id: Number.isInteger(teamId) && flat.team_id !== '' ? teamId : undefined,
    }
}

function recordOf(raw: unknown, before: Position, after: Position): InputRecord {
    const row = toExportRow(raw)
    return typeof row === 'string' ? { before, after, error: row } : { before, after, row }
}

// ---------------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------------

/** Gzip by its magic bytes, whatever the file is called. */
export function isGzipFile(file: string): boolean {
    const fd = openSync(file, 'r')
    try {
        const magic = Buffer.alloc(2)
        return readSync(fd, magic, 0, 2, 0) === 2 && magic[0] === 0x1f && magic[1] === 0x8b
    } finally {
        closeSync(fd)
    }
}

export function detectFormat(file: string): InputFormat {
    return /\.csv(\.gz)?$/i.test(file) ? 'csv' : 'jsonl'
}

interface Line {
    text: string
    /** Byte offsets of the line's start and of the next line's start. */
    start: number
    end: number
}

/**
 * Splits a byte stream on `\n` and keeps exact byte offsets, which readline cannot give; `\n` never occurs
 * inside a multi-byte UTF-8 sequence, so each line decodes on its own.
 */
export async function* splitLines(source: AsyncIterable<Buffer>, startOffset = 0): AsyncGenerator<Line> {
    let carry: Buffer = Buffer.alloc(0)
    let offset = startOffset // offset of carry[0]
    for await (const chunk of source) {
        const data = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk
        let start = 0
        for (let newline = data.indexOf(0x0a); newline !== -1; newline = data.indexOf(0x0a, start)) {
            const text = data.toString('utf8', start, newline).replace(/\r$/, '')
            yield { text, start: offset + start, end: offset + newline + 1 }
            start = newline + 1
        }
        offset += start
        carry = data.subarray(start)
    }
    if (carry.length > 0) {
        yield { text: carry.toString('utf8').replace(/\r$/, ''), start: offset, end: offset + carry.length }
    }
}

function parseJsonLine(text: string): unknown {
    try {
        return JSON.parse(text)
    } catch {
        return undefined
    }
}

/** How far the parser got, in bytes of its input: the progress of plain files. */
interface Consumed {
    bytes: number
}

/** `firstLine`: the number of the line before the stream's first (non-zero after a seek). */
async function* jsonLinesRecords(
    lines: AsyncIterable<Line>,
    resumeAt: Position,
    options: { firstLine: number; offsets: boolean; consumed: Consumed }
): AsyncGenerator<InputRecord> {
    let line = options.firstLine
    for await (const { text, start, end } of lines) {
        line++
        options.consumed.bytes = end
        if (line <= resumeAt.line || text.trim() === '') continue
        // Offsets in a gunzipped stream cannot be seeked to: only plain files record them.
        const before = { line: line - 1, offset: options.offsets ? start : undefined }
        const after = { line, offset: options.offsets ? end : undefined }
        const raw = parseJsonLine(text)
        yield raw === undefined ? { before, after, error: 'not valid JSON' } : recordOf(raw, before, after)
    }
}

interface CsvItem {
    record: JsonObject
    info: { lines: number; bytes: number }
}

async function* csvRecords(
    parser: AsyncIterable<CsvItem>,
    resumeAt: Position,
    consumed: Consumed
): AsyncGenerator<InputRecord> {
    let previousLine = 1 // the header
    for await (const { record, info } of parser) {
        consumed.bytes = info.bytes
        const before = { line: previousLine }
        previousLine = info.lines
        // A quoted field may span lines: a record is done when its last line is.
        if (info.lines <= resumeAt.line) continue
        yield recordOf(record, before, { line: info.lines })
    }
}

/** Only plain JSON Lines can be entered at a byte offset; gzip and CSV are read from the start and skipped. */
function canSeek(format: InputFormat, gzip: boolean, resumeAt: Position): boolean {
    return format === 'jsonl' && !gzip && resumeAt.offset !== undefined
}

/** Opens an export for streaming, from `resumeAt` on (records ending at or before it are skipped). */
export function openInput(file: string, format: InputFormat, resumeAt: Position = { line: 0 }): InputSource {
    const size = statSync(file).size
    const gzip = isGzipFile(file)
    const seek = canSeek(format, gzip, resumeAt)
    const startOffset = seek ? Math.min(resumeAt.offset ?? 0, size) : 0
    const raw: ReadStream = createReadStream(file, { start: startOffset })
    let decoded: Readable = raw
    if (gzip) {
        const gunzip = createGunzip()
        pipeline(raw, gunzip, () => undefined) // an error reaches the reader through `gunzip`
        decoded = gunzip
    }
    const consumed: Consumed = { bytes: startOffset }
    let records: AsyncIterable<InputRecord>
    if (format === 'csv') {
        const parser = parseCsv({
            columns: true,
            bom: true,
            info: true,
            skip_empty_lines: true,
            relax_column_count: true,
        })
        pipeline(decoded, parser, () => undefined)
        records = csvRecords(parser, resumeAt, consumed)
    } else {
        const options = { firstLine: seek ? resumeAt.line : 0, offsets: !gzip, consumed }
        records = jsonLinesRecords(splitLines(decoded, startOffset), resumeAt, options)
    }
    return {
        format,
        records,
        bytesDone: () => (gzip ? raw.bytesRead : consumed.bytes),
        size,
        close: () => {
            decoded.destroy()
            raw.destroy()
        },
    }
}
