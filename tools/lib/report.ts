/** Plain-text tables and figures for the tools' reports: no colours, so a terminal, a CI log and a README agree. */

export type Align = 'left' | 'right'

export interface Column {
    header: string
    /** Numbers read best right-aligned; default left. */
    align?: Align
    /** Longest rule under the header: a long last column need not draw a line across the screen. */
    ruleMax?: number
}

function pad(text: string, width: number, align: Align): string {
    return align === 'right' ? text.padStart(width) : text.padEnd(width)
}

/**
 * A header row, a rule, then the rows. `plain`: columns two spaces apart, trailing spaces trimmed;
 * `markdown`: a `| a | b |` table with a `|---|---|` rule, as pasted into a README or an issue.
 */
export function formatTable(
    columns: Column[],
    rows: string[][],
    indent = '',
    style: 'plain' | 'markdown' = 'plain'
): string[] {
    const widths = columns.map((column, i) =>
        Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length))
    )
    const cells = (row: string[]): string[] =>
        columns.map((column, i) => pad(row[i] ?? '', widths[i], column.align ?? 'left'))
    if (style === 'markdown') {
        const line = (row: string[]): string => `${indent}| ${cells(row).join(' | ')} |`
        const rule = `${indent}|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`
        return [line(columns.map((column) => column.header)), rule, ...rows.map(line)]
    }
    const line = (row: string[]): string => (indent + cells(row).join('  ')).trimEnd()
    const rule =
        indent + widths.map((width, i) => '-'.repeat(Math.min(width, columns[i].ruleMax ?? width))).join('  ')
    return [line(columns.map((column) => column.header)), rule, ...rows.map(line)]
}

/** A column of a table with one row per item: its header and how an item's cell reads. */
export interface ItemColumn<T> extends Column {
    cell: (item: T) => string | number
}

/** One row per item, each cell from its column (see formatTable). */
export function formatItems<T>(
    columns: ItemColumn<T>[],
    items: readonly T[],
    indent = '',
    style: 'plain' | 'markdown' = 'plain'
): string[] {
    const rows = items.map((item) => columns.map((column) => String(column.cell(item))))
    return formatTable(columns, rows, indent, style)
}

/** `label ........ value` lines with the values in one column. */
export function formatPairs(pairs: Array<[string, string]>, indent = '  '): string[] {
    const width = Math.max(0, ...pairs.map(([label]) => label.length))
    return pairs.map(([label, value]) => `${indent}${label.padEnd(width)}  ${value}`.trimEnd())
}

/** 10000 → "10,000": counts are easier to compare with separators. */
export function formatCount(value: number): string {
    return value.toLocaleString('en-US')
}

/** A ratio with fixed decimals; "n/a" when the denominator is zero rather than Infinity or NaN. */
export function formatRatio(numerator: number, denominator: number, digits = 2): string {
    return denominator === 0 ? 'n/a' : (numerator / denominator).toFixed(digits)
}

export function formatPercent(part: number, whole: number, digits = 2): string {
    return whole === 0 ? 'n/a' : `${((100 * part) / whole).toFixed(digits)}%`
}

/** The sum of a table of counts. */
export function sumCounts(counts: Record<string, number> | undefined): number {
    return Object.values(counts ?? {}).reduce((sum, count) => sum + count, 0)
}

/** Counts by key, largest first, as `key: n` items. */
export function sortedCounts(counts: Record<string, number>): Array<[string, number]> {
    return Object.entries(counts).sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
}

/** A titled section: a blank line, the title, and a rule as long as the title. */
export function heading(title: string, rule = '-'): string[] {
    return ['', title, rule.repeat(title.length)]
}
