/** One exported event in one shape, whatever the export: JSON Lines, Parquet, or the PostHog UI's CSV with its flattened columns. */

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

type JsonObject = Record<string, unknown>

/** Dates from another realm (hyparquet loaded outside jest's sandbox) fail `instanceof Date`: their tag does not. */
function isDate(value: unknown): value is Date {
    return Object.prototype.toString.call(value) === '[object Date]'
}

function isObject(value: unknown): value is JsonObject {
    return typeof value === 'object' && value !== null && !Array.isArray(value) && !isDate(value)
}

/** `properties` and `person_properties`: objects in JSON exports, JSON text in CSV and Parquet; undefined when empty. */
function objectField(value: unknown, name: string): JsonObject | string | undefined {
    if (value === undefined || value === null || value === '') return undefined
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
 * ClickHouse's `2024-05-01 12:00:00.123456` is UTC without a zone (Date.parse would read local time): PostHog
 * makes it ISO 8601 UTC before a plugin sees it, and so does the replay. Anything else is left to the plugin.
 */
export function normalizeTimestamp(value: unknown): string | undefined {
    if (isDate(value)) return Number.isNaN(value.getTime()) ? undefined : value.toISOString()
    if (typeof value === 'number' && Number.isFinite(value)) return String(value)
    if (typeof value !== 'string' || value.trim() === '') return undefined
    const match = CLICKHOUSE_TIMESTAMP.exec(value.trim())
    if (!match) return value.trim()
    const fraction = (match[3] ?? '.000').slice(0, 4).padEnd(4, '0')
    return `${match[1]}T${match[2]}${fraction}Z`
}

// --- The CSV of PostHog's UI: nested values flattened into dotted columns

/**
 * PostHog's CSV exporter flattens each row: nested keys joined with `.` (`properties.$set.email`), list items
 * numbered (`tags.0`), the events table's `*` column prefixing everything (`*.properties.plan`).
 */
const NESTED_COLUMN = /^(properties|person_properties|person\.properties)\.(.+)$/

/** A cell as Python's csv writer spelled it: `True`/`False`, and numbers as `str()` writes them (`007` stays text). */
export function csvValue(cell: string): unknown {
    if (cell === 'True' || cell === 'False') return cell === 'True'
    const number = Number(cell)
    return cell.trim() !== '' && Number.isFinite(number) && String(number) === cell ? number : cell
}

/** Objects whose keys are exactly 0..n-1 were lists before flattening. */
function restoreLists(value: unknown): unknown {
    if (!isObject(value)) return value
    const entries = Object.entries(value).map(([key, inner]) => [key, restoreLists(inner)] as const)
    const isList = entries.length > 0 && entries.every(([key], index) => key === String(index))
    return isList ? entries.map(([, inner]) => inner) : Object.fromEntries(entries)
}

function setPath(target: JsonObject, path: string[], value: unknown): void {
    let node = target
    for (const segment of path.slice(0, -1)) {
        if (!isObject(node[segment])) node[segment] = {}
        node = node[segment] as JsonObject
    }
    node[path[path.length - 1]] = value
}

/** Flat CSV columns → the row's fields, with nested columns rebuilt into objects under the three fields above. */
export function unflattenColumns(raw: Record<string, string>): JsonObject {
    const flat: JsonObject = {}
    const nested = { properties: {} as JsonObject, person_properties: {} as JsonObject }
    for (const [name, cell] of Object.entries(raw)) {
        const column = name.startsWith('*.') ? name.slice(2) : name
        const inner = NESTED_COLUMN.exec(column)
        if (!inner) {
            flat[column] = cell
            continue
        }
        const field = inner[1] === 'properties' ? 'properties' : 'person_properties'
        if (cell !== '') setPath(nested[field], inner[2].split('.'), csvValue(cell))
    }
    for (const field of ['properties', 'person_properties'] as const) {
        const rebuilt = restoreLists(nested[field]) as JsonObject
        if (Object.keys(rebuilt).length === 0) continue
        const whole = objectField(flat[field], field) ?? {}
        flat[field] = typeof whole === 'string' ? whole : { ...whole, ...rebuilt }
    }
    return flat
}

// --- Any export row → ExportRow

function optionalString(value: unknown): string | undefined {
    if (typeof value === 'string') return value === '' ? undefined : value
    return typeof value === 'number' || typeof value === 'bigint' ? String(value) : undefined
}

/** The export row as the replay needs it, or the reason it cannot be one. */
export function toExportRow(raw: unknown): ExportRow | string {
    if (!isObject(raw)) return 'not a JSON object'
    const event = optionalString(raw.event)
    if (!event) return 'no event name'
    const properties = objectField(raw.properties, 'properties') ?? {}
    if (typeof properties === 'string') return properties
    // Batch exports have `person_properties`; some tools nest them as `person.properties`.
    const person = raw.person_properties ?? (isObject(raw.person) ? raw.person.properties : undefined)
    const personProperties = objectField(person, 'person_properties')
    if (typeof personProperties === 'string') return personProperties
    const teamId = Number(raw.team_id)
    return {
        uuid: optionalString(raw.uuid) ?? '',
        event,
        distinct_id: optionalString(raw.distinct_id) ?? '',
        properties,
        // A missing timestamp would become "now" in the plugin, and "now" differs on every run.
        timestamp: normalizeTimestamp(raw.timestamp) ?? normalizeTimestamp(raw.created_at),
        person_id: optionalString(raw.person_id),
        person_properties: personProperties,
        team_id: Number.isInteger(teamId) && raw.team_id !== '' ? teamId : undefined,
    }
}
