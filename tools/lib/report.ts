/** Plain-text tables, figures and counts for the tools' reports (no colours: a terminal, a CI log, a README agree). */

export interface Column {
    header: string
    /** Numbers read best right-aligned; default left. */
    align?: 'left' | 'right'
    /** Longest rule under the header: a long last column need not draw a line across the screen. */
    ruleMax?: number
}

/** A header row, a rule, then the rows: columns two spaces apart, trailing spaces trimmed. */
export function formatTable(columns: Column[], rows: string[][], indent = ''): string[] {
    const widths = columns.map((column, i) =>
        Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length))
    )
    const cell = (i: number, text = ''): string =>
        columns[i].align === 'right' ? text.padStart(widths[i]) : text.padEnd(widths[i])
    const line = (row: string[]): string =>
        (indent + columns.map((_, i) => cell(i, row[i])).join('  ')).trimEnd()
    const rule = widths.map((width, i) => '-'.repeat(Math.min(width, columns[i].ruleMax ?? width)))
    return [line(columns.map((column) => column.header)), indent + rule.join('  '), ...rows.map(line)]
}

/** A column of a table with one row per item: its header and how an item's cell reads. */
export interface ItemColumn<T> extends Column {
    cell: (item: T) => string | number
}

/** One row per item, each cell from its column (see formatTable). */
export function formatItems<T>(columns: ItemColumn<T>[], items: readonly T[], indent = ''): string[] {
    const rows = items.map((item) => columns.map((column) => String(column.cell(item))))
    return formatTable(columns, rows, indent)
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

export function addCount(counts: Record<string, number>, key: string, n = 1): void {
    counts[key] = (counts[key] ?? 0) + n
}

export function sumCounts(counts: Record<string, number> | undefined): number {
    return Object.values(counts ?? {}).reduce((sum, count) => sum + count, 0)
}

/** Counts by key, largest first (ties by key), as `[key, n]` pairs. */
export function sortedCounts(counts: Record<string, number>): Array<[string, number]> {
    return Object.entries(counts).sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
}

/** A titled section: a blank line, the title, and a rule as long as the title. */
export function heading(title: string): string[] {
    return ['', title, '-'.repeat(title.length)]
}
