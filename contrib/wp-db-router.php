<?php
/**
 * wp-db-router.php: tenantkit's WordPress database drop-in (install as wp-content/db.php).
 *
 * Reads go to the local replica, writes to the (remote, compressed) primary, and content
 * changes are published as tenantkit invalidation events. mysqli only; PHP 8.2; no Composer.
 *
 * Install: symlink or copy this file to wp-content/db.php, with contrib/tenantkit-events.php
 * next to it (or define TENANTKIT_EVENTS_FILE), and put in wp-config.php (or print the block
 * with `tenantkit provision <site> --print-wp-config`):
 *
 *     define('TENANTKIT_SITE', 'blog');                        // the tenantkit site name
 *     define('TENANTKIT_DB_PRIMARY', 'mysql://wp:secret@db1.example.net:3306/blog');
 *     define('TENANTKIT_DB_REPLICAS', ['mysql://wp:secret@127.0.0.1:3306/blog']);
 *     define('TENANTKIT_COMPRESS', true);                      // compressed primary link
 *     define('TENANTKIT_BUS', 'redis://10.0.0.5:6379/0');     // or the site's .purge/ directory
 *     define('TENANTKIT_PURGE_DIR', '/var/cache/tenantkit/blog/.purge');  // bus-down fallback
 *     define('TENANTKIT_READ_YOUR_WRITES', 'gtid');            // 'gtid', 'pin' or 'off'
 *     define('TENANTKIT_PIN_SECONDS', 5);
 *     define('TENANTKIT_GTID_WAIT_TIMEOUT', 1);
 *     define('TENANTKIT_CONNECT_TIMEOUT', 2);
 *     define('TENANTKIT_READ_TIMEOUT', 30);                   // a hung server; 0: mysqlnd's
 *     define('TENANTKIT_LAG_THRESHOLD', 5);
 *     define('TENANTKIT_DEAD_HOST_COOLDOWN', 10);
 *     define('TENANTKIT_DB_PRIMARIES', ['mysql://wp:secret@db1/blog', 'mysql://wp:secret@db2/blog']);
 *     define('TENANTKIT_PRIMARY_CHECK_INTERVAL', 5);           // seconds a verdict is trusted
 *
 * Servers are `mysql://user:password@host:port/database` URLs (user, password and database
 * default to DB_USER, DB_PASSWORD, DB_NAME) or DB_HOST-style `host[:port|:/socket]`. Without
 * TENANTKIT_DB_PRIMARY the primary is DB_HOST; without replicas everything goes to it.
 *
 * Routing, per statement (the classifier is tenantkit.db.classify's rules, one for one; its
 * word lists are generated from tenantkit/db/sql_keywords.json):
 * - a write goes to the primary; never to a replica. Every later statement of the request
 *   goes to the primary too (insert-then-select sees its row; transactions stay together),
 *   and never to a replica: should the primary die after the write, the reads fail.
 * - a read goes to the first healthy replica. Exception to "write" for routing only:
 *   a SELECT that is a write only because of SQL_CALC_FOUND_ROWS runs on the read link, and
 *   FOUND_ROWS() always runs on the link that ran the last SQL_CALC_FOUND_ROWS query.
 * - read-your-writes across requests: a data write in a non-GET request sets the cookie
 *   `tenantkit_wp_pin` for TENANTKIT_PIN_SECONDS. Mode 'pin': that browser reads from the primary
 *   while the cookie lasts. Mode 'gtid' (MariaDB): the cookie carries the write's GTID and
 *   the replica first waits for it (MASTER_GTID_WAIT, up to TENANTKIT_GTID_WAIT_TIMEOUT);
 *   if the wait times out the request reads from the primary. GET requests that write
 *   (cron, transients) keep read-your-writes inside the request but pin no one.
 * - a replica that refuses connections, has its SQL thread stopped, or lags more than
 *   TENANTKIT_LAG_THRESHOLD seconds (SHOW REPLICA STATUS, else SHOW SLAVE STATUS on older
 *   servers, once per request; the replica user
 *   needs SLAVE MONITOR / REPLICATION CLIENT; 0 turns the check off) is skipped (reads go to the next replica, else the
 *   primary) and tried again after TENANTKIT_DEAD_HOST_COOLDOWN seconds (state is kept in
 *   small files in TENANTKIT_STATE_DIR, default the system temp dir).
 * - the primary unreachable (connect timeout TENANTKIT_CONNECT_TIMEOUT) when a write needs
 *   it: WordPress's own dead_db() page, or, once the page has started (template_redirect),
 *   the query fails. Reads keep working from the replicas.
 * - failover: TENANTKIT_DB_PRIMARIES lists primary candidates instead of one
 *   TENANTKIT_DB_PRIMARY. Writes go to the one with @@read_only = 0. The verdict is kept in a
 *   small state file (TENANTKIT_STATE_DIR) for TENANTKIT_PRIMARY_CHECK_INTERVAL seconds, so a
 *   request does not probe every candidate; it is dropped at once when a write on the
 *   primary fails as read-only (1290, 1836) or with a lost connection, or the primary
 *   refuses connections. More than one writable: a split brain, writes refused (the query
 *   fails, naming both) until exactly one is; reads go on. Each change is logged once.
 *   tenantkit never promotes anything: the operator (or a failover tool) does.
 *
 * Events (tenantkit's JSON, README "Invalidation events"), queued by the hooks and published
 * at the end of the request with the primary's @@last_gtid: comment_post (approved only),
 * wp_set_comment_status / transition_comment_status / edit_comment / delete_comment (when an
 * approved comment is concerned), save_post / transition_post_status / trashed_post /
 * deleted_post (public posts that are or were published), switch_theme, and with
 * TENANTKIT_PUBLISH_OPTIONS true, updated_option (transients, cron and the like excluded).
 * Spam and held comments publish nothing. A bus that is down never breaks the request.
 */

if (!defined('ABSPATH') && PHP_SAPI !== 'cli') {
    exit;
}

if (!function_exists('tenantkit_publish')) {
    require_once defined('TENANTKIT_EVENTS_FILE') ? TENANTKIT_EVENTS_FILE
        : __DIR__ . '/tenantkit-events.php';
}

if (!class_exists('Tenantkit_SQL_Classifier', false)) {

/**
 * Is a SQL statement a read or a write? A port of tenantkit.db.classify, rule for rule (see
 * that module's docstring); both are tested against tests/vectors/sql_roles.json.
 */
final class Tenantkit_SQL_Classifier
{
    // Every quantifier is possessive: the engine never backtracks, a statement is lexed in
    // one pass. Bytes, not characters (no /u: no UTF-8 check per call): a word is ASCII word
    // characters and whole UTF-8 sequences of U+0080..U+FFFF, as in Python.
    private const WORD = '(?:[0-9A-Z_$]|[\xc0-\xef][\x80-\xbf]*+)++';
    private const LEADING_WORD = '~\A[ \t\n\r\f\v(]*+((?:[0-9A-Z_$]|[\xc0-\xef][\x80-\xbf]*+)++)~';
    private const LINE_COMMENT = '--(?=[\x00-\x20\x7f]|\z)[^\n\x00]*+|\#[^\n\x00]*+';
    private const PLAIN_COMMENT = '/\*(?!M?!)[^*]*+\*++(?:[^/*][^*]*+\*++)*+/';
    private const SINGLE_BACKSLASH = '\'[^\'\\\\]*+(?:(?:\\\\[\s\S]|\'\')[^\'\\\\]*+)*+\'';
    private const DOUBLE_BACKSLASH = '"[^"\\\\]*+(?:(?:\\\\[\s\S]|"")[^"\\\\]*+)*+"';
    private const SINGLE_PLAIN = '\'[^\']*+(?:\'\'[^\']*+)*+\'';
    private const DOUBLE_PLAIN = '"[^"]*+(?:""[^"]*+)*+"';
    private const BACKQUOTED = '`[^`]*+(?:``[^`]*+)*+`';
    private const OPENER = '/\*M?!(?:[0-9]{5}[0-9]?)?';
    private const UNTERMINATED = '[\'"`][\s\S]*+|/\*[\s\S]*+';
    private const SKIPPED = '~\G(?:[^*/]++|\*(?!/)|/(?!\*)|/\*[^*]*+\*++(?:[^/*][^*]*+\*++)*+/)*+\*/~';
    private const VERSIONS = '~/\*(M?)!([0-9]{5}[0-9]?)~';
    private const MAX_VERSIONS = 8;
    private const UNTERMINATED_REASON = 'cannot parse: unterminated string, identifier or comment';

    // BEGIN generated from tenantkit/db/sql_keywords.json by
    // `python -m tenantkit.db.phpkeywords`: do not edit
    private const STATEMENTS = [
        'SELECT', 'INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'TABLE', 'VALUES',
    ];
    private const READ_STARTERS = [
        'SELECT', 'WITH', 'SHOW', 'HELP', 'EXPLAIN', 'DESCRIBE', 'DESC', 'ANALYZE', 'START',
    ];
    private const EXPLAIN_OPTIONS = ['EXTENDED', 'PARTITIONS', 'ANALYZE'];
    private const FORMAT_VALUES = ['JSON', 'TRADITIONAL', 'TREE'];
    private const UNSAFE_FUNCTIONS = [
        'GET_LOCK', 'RELEASE_LOCK', 'RELEASE_ALL_LOCKS', 'IS_USED_LOCK', 'IS_FREE_LOCK',
        'LAST_INSERT_ID', 'FOUND_ROWS', 'ROW_COUNT', 'CONNECTION_ID', 'LASTVAL', 'NEXTVAL',
        'SETVAL', 'SLEEP', 'BENCHMARK', 'MASTER_POS_WAIT', 'MASTER_GTID_WAIT',
        'WAIT_FOR_EXECUTED_GTID_SET', 'SOURCE_POS_WAIT', 'UUID_SHORT', 'LOAD_FILE',
        'WSREP_LAST_SEEN_GTID', 'WSREP_LAST_WRITTEN_GTID', 'WSREP_SYNC_WAIT_UPTO_GTID',
    ];
    private const UNSAFE_SYSVARS = [
        'IDENTITY', 'LAST_INSERT_ID', 'INSERT_ID', 'LAST_GTID', 'WARNING_COUNT', 'ERROR_COUNT',
        'IN_TRANSACTION',
    ];
    private const SYSVAR_SCOPES = ['GLOBAL', 'SESSION', 'LOCAL'];
    private const ORACLE_SEQUENCE_WORDS = ['NEXTVAL', 'CURRVAL'];
    private const TRAP_WORDS = [
        'FOR', 'LOCK', 'INTO', ':=', '@', '@@', 'SQL_CALC_FOUND_ROWS', 'NEXT', 'PREVIOUS',
    ];
    private const SESSION_SHOW = ['WARNINGS', 'ERRORS', 'COUNT', 'PROFILE', 'PROFILES'];
    private const READ_ONLY_CHARACTERISTICS = ['READ', 'ONLY', 'WITH', 'CONSISTENT', 'SNAPSHOT'];
    // END generated from tenantkit/db/sql_keywords.json

    // What Python's str.upper() turns into ASCII letters (PHP's strtoupper is ASCII-only).
    private const UPPER_TO_ASCII = [
        "\u{131}" => 'I', "\u{17F}" => 'S', "\u{DF}" => 'SS', "\u{FB00}" => 'FF',
        "\u{FB01}" => 'FI', "\u{FB02}" => 'FL', "\u{FB03}" => 'FFI', "\u{FB04}" => 'FFL',
        "\u{FB05}" => 'ST', "\u{FB06}" => 'ST',
    ];
    private const CACHE_SIZE = 1024;
    private const CACHE_MAX_LENGTH = 4096;

    /** @var array<string, string> */
    private static array $patterns = [];
    /** @var array<string, array{0: string, 1: string}> */
    private static array $cache = [];
    /** @var array<string, string> */
    private static array $route_cache = [];
    /** @var array<string, true>|null */
    private static ?array $trap_hints = null;

    /** "read" or "write". */
    public static function role(string $sql): string
    {
        if (strlen($sql) > self::CACHE_MAX_LENGTH) {
            return self::explain($sql)[0];
        }
        if (!isset(self::$cache[$sql])) {
            if (count(self::$cache) >= self::CACHE_SIZE) {
                self::$cache = [];
            }
            self::$cache[$sql] = self::explain($sql);
        }
        return self::$cache[$sql][0];
    }

    /**
     * How the drop-in routes $sql: "read", "write", "calc" (a write only because of
     * SQL_CALC_FOUND_ROWS: it may run on the read link) or "found_rows" (a write only because
     * of FOUND_ROWS(): it runs where the last "calc" ran).
     */
    public static function route(string $sql): string
    {
        if (strlen($sql) <= self::CACHE_MAX_LENGTH && isset(self::$route_cache[$sql])) {
            return self::$route_cache[$sql];
        }
        $route = self::route_uncached($sql);
        if (strlen($sql) <= self::CACHE_MAX_LENGTH) {
            if (count(self::$route_cache) >= self::CACHE_SIZE) {
                self::$route_cache = [];
            }
            self::$route_cache[$sql] = $route;
        }
        return $route;
    }

    private static function route_uncached(string $sql): string
    {
        [$role, $reason] = self::explain($sql);
        if ($role === 'read') {
            return 'read';
        }
        if (str_starts_with($reason, 'SQL_CALC_FOUND_ROWS')
            && self::explain($sql, ['SQL_CALC_FOUND_ROWS'])[0] === 'read') {
            return 'calc';
        }
        if ($reason === 'session-dependent function FOUND_ROWS()'
            && self::explain($sql, ['FOUND_ROWS'])[0] === 'read') {
            return 'found_rows';
        }
        return 'write';
    }

    /**
     * [role, reason]. $ignore: words to drop before deciding (the router asks "is this a read
     * apart from SQL_CALC_FOUND_ROWS?").
     *
     * @param list<string> $ignore
     * @return array{0: string, 1: string}
     */
    public static function explain(string $sql, array $ignore = []): array
    {
        // "/*m!" is a plain comment to MariaDB: keep it one after upper-casing.
        $sql = str_replace('/*m!', '/*_!', $sql);
        $unicode = preg_match('//u', $sql) === 1;
        $upper = strtoupper($unicode ? strtr($sql, self::UPPER_TO_ASCII) : $sql);
        if ($ignore === [] && preg_match(self::LEADING_WORD, $upper, $m) === 1
            && !in_array($m[1], self::READ_STARTERS, true)) {
            // Every rule makes a statement that starts with another word a write, whatever
            // follows: decide from the first word and spare the scan of a long INSERT.
            return ['write', "{$m[1]} statement"];
        }
        $versioned = str_contains($upper, '/*!') || str_contains($upper, '/*M!');
        $thresholds = [-1];
        if ($versioned) {
            $ambiguous = [];
            if (preg_match_all(self::VERSIONS, $upper, $found, PREG_SET_ORDER) === false) {
                return ['write', 'cannot parse: statement too large for the regex engine'];
            }
            foreach ($found as [, $maria, $digits]) {
                $version = (int) $digits;
                if ($maria !== '' || $version < 50700 || $version > 99999) {
                    $ambiguous[$version] = true;
                }
            }
            if (count($ambiguous) > self::MAX_VERSIONS) {
                return ['write', 'more than ' . self::MAX_VERSIONS
                    . ' distinct versions in version-conditional comments'];
            }
            $ambiguous = array_keys($ambiguous);
            sort($ambiguous);
            $thresholds = array_merge($thresholds, $ambiguous);
        }
        $backslash = str_contains($upper, '\\');
        $modes = [[true, false]];
        if ($backslash) {
            $modes[] = [false, false];
        }
        if (str_contains($upper, '"')) {
            $modes[] = [true, true];
            if ($backslash) {
                $modes[] = [false, true];
            }
        }
        $first = null;
        foreach ($modes as $mode) {
            $default = $mode === [true, false];
            foreach ($thresholds as $threshold) {
                $tokens = $versioned ? self::lex_versioned($upper, $mode, $threshold)
                    : self::lex($upper, $mode);
                if (is_string($tokens)) {
                    if ($default) {
                        return ['write', $tokens];
                    }
                    continue;    // a server in that sql_mode refuses the statement
                }
                $verdict = self::classify_tokens($tokens, $ignore);
                if ($verdict[0] === 'write') {
                    if (!$default && str_starts_with($verdict[1], 'cannot parse')) {
                        continue;
                    }
                    return ['write', $verdict[1] . self::qualifier($mode, $threshold, $thresholds)];
                }
                $first ??= $verdict;
            }
        }
        return $first;
    }

    /**
     * @param array{0: bool, 1: bool} $mode
     * @param list<int> $thresholds
     */
    private static function qualifier(array $mode, int $threshold, array $thresholds): string
    {
        $parts = [];
        if (count($thresholds) > 1) {
            $parts[] = $threshold < 0 ? 'when no version-conditional comment runs'
                : "when the server runs version-conditional comments up to $threshold";
        }
        if (!$mode[0]) {
            $parts[] = 'when backslashes do not escape';
        }
        if ($mode[1]) {
            $parts[] = 'when double quotes are identifiers';
        }
        return $parts === [] ? '' : ' (' . implode(', ', $parts) . ')';
    }

    /** @param array{0: bool, 1: bool} $mode */
    private static function scanner(array $mode, bool $versioned): string
    {
        [$backslash, $ansi] = $mode;
        $key = ($backslash ? 'b' : 'n') . ($ansi ? 'a' : 'd') . ($versioned ? 'v' : 'p');
        if (isset(self::$patterns[$key])) {
            return self::$patterns[$key];
        }
        $skip = [self::LINE_COMMENT, self::PLAIN_COMMENT,
            $backslash ? self::SINGLE_BACKSLASH : self::SINGLE_PLAIN];
        $tokens = [self::BACKQUOTED];
        if ($ansi) {
            $tokens[] = self::DOUBLE_PLAIN;
        } else {
            $skip[] = $backslash ? self::DOUBLE_BACKSLASH : self::DOUBLE_PLAIN;
        }
        array_push($tokens, self::WORD, '@@', '[@();]', ':=');
        if ($versioned) {
            array_push($tokens, self::OPENER, '\*/');
        }
        $tokens[] = self::UNTERMINATED;
        return self::$patterns[$key] = '~(?:' . implode('|', $skip) . ')|(' . implode('|', $tokens) . ')~';
    }

    /**
     * The tokens of a statement without version comments, or why it does not lex.
     *
     * @param array{0: bool, 1: bool} $mode
     * @return list<string>|string
     */
    private static function lex(string $upper, array $mode): array|string
    {
        if (preg_match_all(self::scanner($mode, false), $upper, $matches) === false) {
            return 'cannot parse: statement too large for the regex engine';
        }
        $tokens = array_values(array_filter($matches[1], static fn (string $t): bool => $t !== ''));
        if ($tokens !== [] && self::unterminated($tokens[count($tokens) - 1], $mode[1])) {
            return self::UNTERMINATED_REASON;
        }
        return $tokens;
    }

    /** Only the last token can be one: an unterminated one runs to the end. */
    private static function unterminated(string $token, bool $ansi): bool
    {
        if ($token[0] === '`' || $token[0] === '"') {
            if ($token[0] === '"' && !$ansi) {
                return true;
            }
            $pattern = '~\A(?:' . self::BACKQUOTED . ($ansi ? '|' . self::DOUBLE_PLAIN : '') . ')\z~';
            return preg_match($pattern, $token) !== 1;
        }
        return $token[0] === "'" || str_starts_with($token, '/*');
    }

    private static function runs(string $opener, int $threshold): bool
    {
        $maria = $opener[2] === 'M';
        $digits = substr($opener, $maria ? 4 : 3);
        if ($digits === '') {
            return true;
        }
        $version = (int) $digits;
        if (!$maria && $version >= 50700 && $version <= 99999) {
            return false;    // MariaDB skips MySQL 5.7+ comments
        }
        return $version <= $threshold;
    }

    /**
     * The tokens of one reading of a statement with version comments (MariaDB's lexer:
     * content that runs is code, skipped content is not lexed at all).
     *
     * @param array{0: bool, 1: bool} $mode
     * @return list<string>|string
     */
    private static function lex_versioned(string $upper, array $mode, int $threshold): array|string
    {
        $pattern = self::scanner($mode, true);
        $tokens = [];
        $executing = false;
        $offset = 0;
        $length = strlen($upper);
        while ($offset < $length) {
            $found = preg_match($pattern, $upper, $m, PREG_OFFSET_CAPTURE, $offset);
            if ($found === false) {
                return 'cannot parse: statement too large for the regex engine';
            }
            if ($found === 0) {
                break;
            }
            $start = $m[0][1];
            $offset = $start + strlen($m[0][0]);
            $token = isset($m[1]) && $m[1][1] >= 0 ? $m[1][0] : '';
            if ($token === '') {
                continue;
            }
            if (str_starts_with($token, '/*!') || str_starts_with($token, '/*M!')) {
                if ($executing) {
                    return 'cannot parse: an executable comment inside another';
                }
                if (self::runs($token, $threshold)) {
                    $executing = true;
                    continue;
                }
                if (preg_match(self::SKIPPED, $upper, $skipped, 0, $offset) !== 1) {
                    return 'cannot parse: unterminated version-conditional comment';
                }
                $offset += strlen($skipped[0]);
                continue;
            }
            if ($token === '*/') {
                if ($executing) {
                    $executing = false;
                } else {
                    $offset = $start + 1;    // "*", then lex again from the "/"
                }
                continue;
            }
            $tokens[] = $token;
        }
        if ($tokens !== [] && self::unterminated($tokens[count($tokens) - 1], $mode[1])) {
            return self::UNTERMINATED_REASON;
        }
        if ($executing) {
            return 'cannot parse: unclosed executable comment';
        }
        return $tokens;
    }

    /**
     * @param list<string> $tokens
     * @param list<string> $ignore
     * @return array{0: string, 1: string}
     */
    private static function classify_tokens(array $tokens, array $ignore): array
    {
        $words = [];
        foreach ($tokens as $token) {
            if (!in_array($token, $ignore, true)) {
                $words[] = $token;
            }
        }
        if ($words === []) {
            return ['write', 'cannot parse: no statement'];
        }
        $present = array_fill_keys($words, true);
        if (isset($present[';'])) {
            $end = array_search(';', $words, true);
            foreach (array_slice($words, $end + 1) as $word) {
                if ($word !== ';') {
                    return ['write', 'multi-statement string'];
                }
            }
            $words = array_slice($words, 0, $end);
            if ($words === []) {
                return ['write', 'cannot parse: no statement'];
            }
            $present = array_fill_keys($words, true);
        }
        $counts = array_count_values($words);
        if (($counts['('] ?? 0) !== ($counts[')'] ?? 0)) {
            return ['write', 'cannot parse: unbalanced parentheses'];
        }
        return self::classify_words($words, $present);
    }

    /** @return array<string, true> */
    private static function trap_hints(): array
    {
        if (self::$trap_hints === null) {
            self::$trap_hints = array_fill_keys(array_merge(self::UNSAFE_FUNCTIONS,
                self::TRAP_WORDS, self::ORACLE_SEQUENCE_WORDS), true);
        }
        return self::$trap_hints;
    }

    /** @param array<string, true> $present */
    private static function has_trap(array $present): bool
    {
        if (array_intersect_key($present, self::trap_hints()) !== []) {
            return true;
        }
        foreach ($present as $token => $_) {
            $token = (string) $token;
            if ($token[0] === '`' || $token[0] === '"') {
                return true;
            }
        }
        return false;
    }

    /** A word, or a quoted identifier's name (`GET_LOCK` names GET_LOCK). */
    private static function name(string $token): string
    {
        if ($token !== '' && ($token[0] === '`' || $token[0] === '"')) {
            return str_replace($token[0] . $token[0], $token[0], substr($token, 1, -1));
        }
        return $token;
    }

    /**
     * @param list<string> $words
     * @param array<string, true> $present
     * @return array{0: string, 1: string}
     */
    private static function classify_words(array $words, array $present): array
    {
        $n = count($words);
        $start = 0;
        while ($start < $n && $words[$start] === '(') {
            $start++;
        }
        if ($start === $n) {
            return ['write', 'cannot parse: no statement'];
        }
        $first = $words[$start];
        if ($first === 'SELECT') {
            return self::select($words, $present);
        }
        if ($first === 'WITH') {
            return self::with($words, $start, $present);
        }
        if ($first === 'SHOW') {
            $next = $words[$start + 1] ?? '';
            if (in_array($next, self::SESSION_SHOW, true)) {
                return ['write', "SHOW $next reports on this connection's last statement"];
            }
            return ['read', 'SHOW'];
        }
        if ($first === 'HELP') {
            return ['read', 'HELP'];
        }
        if ($first === 'EXPLAIN' || $first === 'DESCRIBE' || $first === 'DESC') {
            return self::explain_words($words, $start + 1, $first);
        }
        if ($first === 'ANALYZE') {
            return self::analyze($words, $start + 1);
        }
        if ($first === 'START') {
            return self::start($words, $start + 1);
        }
        return ['write', "$first statement"];
    }

    /**
     * @param list<string> $words
     * @param array<string, true> $present
     * @return array{0: string, 1: string}
     */
    private static function select(array $words, array $present): array
    {
        if (!self::has_trap($present)) {
            return ['read', 'SELECT'];
        }
        if (isset($present['INTO'])) {
            return ['write', 'SELECT ... INTO'];
        }
        if (isset($present[':='])) {
            return ['write', 'user variable assignment :='];
        }
        if (isset($present['@'])) {
            return ['write', 'user variable (connection state)'];
        }
        if (isset($present['SQL_CALC_FOUND_ROWS'])) {
            return ['write', 'SQL_CALC_FOUND_ROWS (its FOUND_ROWS() must run on the same connection)'];
        }
        $n = count($words);
        foreach ($words as $i => $word) {
            $next = $words[$i + 1] ?? '';
            if ($word === 'FOR' && ($next === 'UPDATE' || $next === 'SHARE')) {
                return ['write', "locking read FOR $next"];
            }
            if ($word === 'LOCK' && $next === 'IN') {
                return ['write', 'locking read LOCK IN SHARE MODE'];
            }
            if (($word === 'NEXT' || $word === 'PREVIOUS') && $next === 'VALUE'
                && $i + 2 < $n && $words[$i + 2] === 'FOR') {
                return ['write', "sequence $word VALUE FOR"];
            }
            if ($word === '@@') {
                $name = self::name($next);
                if (in_array($name, self::SYSVAR_SCOPES, true) && $i + 2 < $n) {
                    $name = self::name($words[$i + 2]);
                }
                if (in_array($name, self::UNSAFE_SYSVARS, true)) {
                    return ['write', "connection state @@$name"];
                }
                continue;
            }
            $name = self::name($word);
            if ($next === '(' && in_array($name, self::UNSAFE_FUNCTIONS, true)) {
                return ['write', "session-dependent function $name()"];
            }
            if (in_array($name, self::ORACLE_SEQUENCE_WORDS, true)) {
                return ['write', "sequence .$name (sql_mode=ORACLE)"];
            }
        }
        return ['read', 'SELECT'];
    }

    /**
     * @param list<string> $words
     * @param array<string, true> $present
     * @return array{0: string, 1: string}
     */
    private static function with(array $words, int $start, array $present): array
    {
        $n = count($words);
        $depth = 0;
        $main = '';
        $previous = '';
        for ($i = $start + 1; $i < $n; $i++) {
            $word = $words[$i];
            if ($word === '(') {
                if ($depth === 0 && $previous === ')') {
                    $j = $i;
                    while ($j < $n && $words[$j] === '(') {
                        $j++;
                    }
                    $main = $words[$j] ?? '';
                    break;
                }
                $depth++;
            } elseif ($word === ')') {
                $depth--;
            } elseif ($depth === 0 && in_array($word, self::STATEMENTS, true)) {
                $main = $word;
                break;
            }
            $previous = $word;
        }
        if ($main === '') {
            return ['write', 'cannot parse: WITH without a main statement'];
        }
        if ($main !== 'SELECT') {
            return ['write', "WITH ... $main"];
        }
        $verdict = self::select($words, $present);
        return $verdict[0] === 'read' ? ['read', 'WITH ... SELECT'] : $verdict;
    }

    /** @param list<string> $words */
    private static function skip_format(array $words, int $i): int
    {
        if (($words[$i] ?? '') === 'FORMAT') {
            $i++;
            if (in_array($words[$i] ?? '', self::FORMAT_VALUES, true)) {
                $i++;
            }
        }
        return $i;
    }

    /** @param list<string> $words */
    private static function is_explained(array $words, int $i): bool
    {
        $word = $words[$i] ?? '';
        return in_array($word, self::STATEMENTS, true) || $word === 'WITH' || $word === '(';
    }

    /**
     * @param list<string> $words
     * @return array{0: string, 1: string}
     */
    private static function explain_words(array $words, int $i, string $keyword): array
    {
        $n = count($words);
        while ($i < $n) {
            if (in_array($words[$i], self::EXPLAIN_OPTIONS, true)) {
                $i++;
            } elseif ($words[$i] === 'FORMAT') {
                $i = self::skip_format($words, $i);
            } else {
                break;
            }
        }
        if ($i < $n && $words[$i] === 'FOR') {
            return ['read', "$keyword FOR CONNECTION"];
        }
        if ($i < $n && self::is_explained($words, $i)) {
            $rest = array_slice($words, $i);
            $inner = self::classify_words($rest, array_fill_keys($rest, true));
            return $inner[0] === 'read' ? ['read', "$keyword of a read"]
                : ['write', "$keyword of a write: {$inner[1]}"];
        }
        return ['read', "$keyword of a table"];    // its name may be backquoted, hence invisible
    }

    /**
     * @param list<string> $words
     * @return array{0: string, 1: string}
     */
    private static function analyze(array $words, int $i): array
    {
        $i = self::skip_format($words, $i);
        if ($i < count($words) && self::is_explained($words, $i)) {
            $rest = array_slice($words, $i);
            $inner = self::classify_words($rest, array_fill_keys($rest, true));
            return $inner[0] === 'read' ? ['read', 'ANALYZE of a read']
                : ['write', "ANALYZE of a write: {$inner[1]}"];
        }
        return ['write', 'ANALYZE TABLE (writes statistics)'];
    }

    /**
     * @param list<string> $words
     * @return array{0: string, 1: string}
     */
    private static function start(array $words, int $i): array
    {
        if (($words[$i] ?? '') === 'TRANSACTION') {
            $rest = array_slice($words, $i + 1);
            $read_only = false;
            foreach ($rest as $k => $word) {
                if ($word === 'READ' && ($rest[$k + 1] ?? '') === 'ONLY') {
                    $read_only = true;
                }
            }
            if ($read_only && array_diff($rest, self::READ_ONLY_CHARACTERISTICS) === []) {
                return ['read', 'START TRANSACTION READ ONLY'];
            }
        }
        return ['write', 'START statement'];
    }
}

}

if (class_exists('wpdb', false) && !class_exists('Tenantkit_DB', false)) {

/**
 * wpdb with a primary link and replica links. Every query picks its link, points $this->dbh at
 * it and lets wpdb::query() do the rest (errors, insert_id, rows, logging).
 */
class Tenantkit_DB extends wpdb
{
    public const COOKIE = 'tenantkit_wp_pin';

    // BEGIN generated from tenantkit/db/failures.py by
    // `python -m tenantkit.db.phpkeywords`: do not edit
    private const CONNECTION_LOST = [1927, 2006, 2013, 2014, 2045, 2055, 4031];
    // END generated from tenantkit/db/failures.py

    /** @var array{host: string, port: ?int, socket: ?string, user: string, password: string, name: string, label: string} */
    public array $tk_primary;
    /** @var list<array{host: string, port: ?int, socket: ?string, user: string, password: string, name: string, label: string}> */
    public array $tk_replicas = [];
    /** @var list<array{host: string, port: ?int, socket: ?string, user: string, password: string, name: string, label: string}> */
    public array $tk_candidates = [];
    /** @var list<string> the replica-status statements, newest first */
    public static array $tk_status_statements = ['SHOW REPLICA STATUS', 'SHOW SLAVE STATUS'];
    public float $tk_primary_check_interval = 5.0;
    /** Why there is no primary link (split brain, no writable candidate), for last_error. */
    public ?string $tk_primary_problem = null;
    public bool $tk_compress = true;
    public string $tk_mode = 'gtid';
    public float $tk_pin_seconds = 5.0;
    public float $tk_gtid_wait_timeout = 1.0;
    public float $tk_connect_timeout = 2.0;
    public float $tk_read_timeout = 30.0;
    public float $tk_lag_threshold = 5.0;
    public float $tk_cooldown = 10.0;
    public string $tk_state_dir = '';

    public ?mysqli $tk_primary_link = null;
    public ?mysqli $tk_read_link = null;
    /** Where the last SQL_CALC_FOUND_ROWS query ran: its FOUND_ROWS() must run there too. */
    public ?mysqli $tk_calc_link = null;
    /** The request wrote: everything after goes to the primary. */
    public bool $tk_wrote = false;
    /** The browser is pinned to the primary (cookie, mode pin) or the replica is behind it. */
    public bool $tk_reads_on_primary = false;
    /** GTID from the read-your-writes cookie, waited for on the first replica read. */
    public ?string $tk_wait_gtid = null;
    public ?string $tk_last_gtid = null;
    /** The value of the read-your-writes cookie this request set, if any. */
    public ?string $tk_cookie_set = null;
    private bool $tk_cookie_pending = false;
    private bool $tk_cookie_hooked = false;
    /** Per-link counts of statements, for tests and debugging: ['primary' => n, 'replica' => n]. */
    public array $tk_counts = ['primary' => 0, 'replica' => 0];
    /** Label of the replica behind tk_read_link (null when reads use the primary). */
    public ?string $tk_read_label = null;
    private bool $tk_read_link_tried = false;
    private int $tk_depth = 0;
    /** The database chosen by select() or USE: every link uses it, now and when opened. */
    public ?string $tk_database = null;
    /** The START TRANSACTION READ ONLY in force, and the links that run it. */
    public ?string $tk_read_only = null;
    /** @var list<mysqli> */
    private array $tk_read_only_links = [];
    /** The role of the statement query() is running ('write' is never re-run by a reconnect). */
    private ?string $tk_statement_role = null;
    /** Counts check_connection()'s reconnections: a statement is retried at most once. */
    private int $tk_reconnects = 0;
    /** A transaction was started (START TRANSACTION, BEGIN) and not yet ended. */
    private bool $tk_in_transaction = false;

    public function __construct($dbuser, $dbpassword, $dbname, $dbhost)
    {
        $this->tk_configure((string) $dbuser, (string) $dbpassword, (string) $dbname, (string) $dbhost);
        $this->tk_read_cookie();
        parent::__construct($dbuser, $dbpassword, $dbname, $dbhost);
    }

    // --- configuration ---------------------------------------------------------------------

    private function tk_configure(string $user, string $password, string $name, string $host): void
    {
        $defaults = ['user' => $user, 'password' => $password, 'name' => $name];
        $primary = defined('TENANTKIT_DB_PRIMARY') ? TENANTKIT_DB_PRIMARY : $host;
        $this->tk_primary = self::tk_parse_server($primary, $defaults, 'TENANTKIT_DB_PRIMARY');
        $this->tk_configure_candidates($defaults);
        $replicas = defined('TENANTKIT_DB_REPLICAS') ? TENANTKIT_DB_REPLICAS : [];
        if (is_string($replicas)) {
            $replicas = array_values(array_filter(array_map('trim', explode(',', $replicas))));
        }
        if (!is_array($replicas)) {
            self::tk_config_error('TENANTKIT_DB_REPLICAS must be a list of server URLs, like '
                . "['mysql://user:password@127.0.0.1:3306/db']");
        }
        foreach (array_values($replicas) as $i => $replica) {
            $this->tk_replicas[] = self::tk_parse_server($replica, $defaults, "TENANTKIT_DB_REPLICAS[$i]");
        }
        $this->tk_compress = defined('TENANTKIT_COMPRESS') ? (bool) TENANTKIT_COMPRESS : true;
        $mode = defined('TENANTKIT_READ_YOUR_WRITES') ? TENANTKIT_READ_YOUR_WRITES : 'gtid';
        if (!in_array($mode, ['gtid', 'pin', 'off'], true)) {
            self::tk_config_error('TENANTKIT_READ_YOUR_WRITES must be "gtid", "pin" or "off", got '
                . var_export($mode, true));
        }
        $this->tk_mode = $mode;
        $this->tk_pin_seconds = self::tk_seconds('TENANTKIT_PIN_SECONDS', 5.0);
        $this->tk_gtid_wait_timeout = self::tk_seconds('TENANTKIT_GTID_WAIT_TIMEOUT', 1.0);
        $this->tk_connect_timeout = max(1.0, self::tk_seconds('TENANTKIT_CONNECT_TIMEOUT', 2.0));
        $this->tk_read_timeout = self::tk_seconds('TENANTKIT_READ_TIMEOUT', 30.0);
        $this->tk_lag_threshold = self::tk_seconds('TENANTKIT_LAG_THRESHOLD', 5.0);
        $this->tk_cooldown = self::tk_seconds('TENANTKIT_DEAD_HOST_COOLDOWN', 10.0);
        $this->tk_state_dir = rtrim(defined('TENANTKIT_STATE_DIR') ? (string) TENANTKIT_STATE_DIR
            : sys_get_temp_dir(), '/');
    }

    /**
     * TENANTKIT_DB_PRIMARIES: the primary candidates (one: exactly TENANTKIT_DB_PRIMARY).
     *
     * @param array{user: string, password: string, name: string} $defaults
     */
    private function tk_configure_candidates(array $defaults): void
    {
        $this->tk_candidates = [$this->tk_primary];
        $this->tk_primary_check_interval = self::tk_seconds('TENANTKIT_PRIMARY_CHECK_INTERVAL', 5.0);
        if (!defined('TENANTKIT_DB_PRIMARIES')) {
            return;
        }
        $list = TENANTKIT_DB_PRIMARIES;
        if (is_string($list)) {
            $list = array_values(array_filter(array_map('trim', explode(',', $list))));
        }
        if (!is_array($list) || $list === []) {
            self::tk_config_error('TENANTKIT_DB_PRIMARIES must be a list of server URLs, like '
                . "['mysql://user:password@db1:3306/db', 'mysql://user:password@db2:3306/db']");
        }
        if (defined('TENANTKIT_DB_PRIMARY')) {
            self::tk_config_error('TENANTKIT_DB_PRIMARY and TENANTKIT_DB_PRIMARIES are both defined:'
                . ' list every candidate in TENANTKIT_DB_PRIMARIES and remove TENANTKIT_DB_PRIMARY');
        }
        $this->tk_candidates = [];
        foreach (array_values($list) as $i => $candidate) {
            $this->tk_candidates[] = self::tk_parse_server($candidate, $defaults, "TENANTKIT_DB_PRIMARIES[$i]");
        }
        $this->tk_primary = $this->tk_candidates[0];
    }

    private static function tk_seconds(string $constant, float $default): float
    {
        if (!defined($constant)) {
            return $default;
        }
        $value = constant($constant);
        if (!is_int($value) && !is_float($value) && !(is_string($value) && is_numeric($value))
            || (float) $value < 0) {
            self::tk_config_error("$constant must be a number of seconds >= 0, got "
                . var_export($value, true));
        }
        return (float) $value;
    }

    /** A configuration mistake: log it and stop with WordPress's database error page. */
    private static function tk_config_error(string $message): never
    {
        error_log('tenantkit: wp-config.php: ' . $message);
        if (function_exists('wp_die')) {
            wp_die('<h1>Database configuration error</h1><p>' . htmlspecialchars($message) . '</p>',
                'Database Error', ['response' => 500]);
        }
        throw new RuntimeException('tenantkit: wp-config.php: ' . $message);
    }

    /**
     * "mysql://user:pass@host:port/db" or DB_HOST style "host[:port|:/socket]".
     *
     * @param array{user: string, password: string, name: string} $defaults
     * @return array{host: string, port: ?int, socket: ?string, user: string, password: string, name: string, label: string}
     */
    public static function tk_parse_server(mixed $spec, array $defaults, string $what): array
    {
        if (!is_string($spec) || trim($spec) === '') {
            self::tk_config_error("$what must be a server URL like mysql://user:password@host:3306/db"
                . ' or a host[:port], got ' . var_export($spec, true));
        }
        $spec = trim($spec);
        $server = ['host' => '', 'port' => null, 'socket' => null] + $defaults;
        if (preg_match('~^([a-z][a-z0-9+.-]*)://~i', $spec, $scheme) === 1) {
            $url = parse_url($spec);
            if ($url === false || !preg_match('/^(mysql|mariadb)(\+[a-z0-9_]+)?$/i', $scheme[1])
                || (!isset($url['host']) && !isset($url['query']))) {
                self::tk_config_error("$what: cannot read " . self::tk_mask($spec)
                    . ' (write mysql://user:password@host:3306/database)');
            }
            $server['host'] = $url['host'] ?? 'localhost';
            $server['port'] = isset($url['port']) ? (int) $url['port'] : null;
            if (isset($url['user'])) {
                $server['user'] = rawurldecode($url['user']);
                $server['password'] = rawurldecode($url['pass'] ?? '');
            }
            $path = trim($url['path'] ?? '', '/');
            if ($path !== '') {
                $server['name'] = rawurldecode($path);
            }
            parse_str($url['query'] ?? '', $query);
            if (isset($query['unix_socket']) && is_string($query['unix_socket'])) {
                $server['socket'] = $query['unix_socket'];
            }
        } else {
            // DB_HOST: host, host:port, host:/socket, [ipv6]:port.
            if (preg_match('~^(?:\[([0-9a-f:.]+)\]|([^:/]*))(?::(\d{1,5}))?(?::(/.+))?$~i', $spec, $m) !== 1) {
                self::tk_config_error("$what: cannot read host \"$spec\" (write host, host:port or host:/path/to/socket)");
            }
            $server['host'] = $m[1] !== '' ? $m[1] : ($m[2] !== '' ? $m[2] : 'localhost');
            $server['port'] = ($m[3] ?? '') !== '' ? (int) $m[3] : null;
            $server['socket'] = ($m[4] ?? '') !== '' ? $m[4] : null;
        }
        if ($server['port'] !== null && ($server['port'] < 1 || $server['port'] > 65535)) {
            self::tk_config_error("$what: port {$server['port']} is not between 1 and 65535");
        }
        $server['label'] = $server['socket'] ?? ($server['host'] . ':' . ($server['port'] ?? 3306));
        return $server;
    }

    private static function tk_mask(string $url): string
    {
        return (string) preg_replace('~^([a-z][a-z0-9+.-]*://[^:@/]*:)[^@/]*@~i', '$1********@', $url);
    }

    // --- read-your-writes cookie -----------------------------------------------------------

    private function tk_read_cookie(): void
    {
        $raw = $_COOKIE[self::COOKIE] ?? null;
        if ($this->tk_mode === 'off' || !is_string($raw) || strlen($raw) > 400) {
            return;
        }
        // "<until>" (pin) or "<until>:<gtid list>" (gtid); anything else is ignored.
        if (preg_match('/^(\d{1,12})(?::(\d{1,10}-\d{1,10}-\d{1,20}(?:,\d{1,10}-\d{1,10}-\d{1,20}){0,15}))?$/D',
            $raw, $m) !== 1) {
            return;
        }
        $until = (int) $m[1];
        $now = time();
        if ($until < $now || $until > $now + (int) ceil($this->tk_pin_seconds) + 1) {
            return;
        }
        if ($this->tk_mode === 'gtid' && ($m[2] ?? '') !== '') {
            $this->tk_wait_gtid = $m[2];
        } else {
            $this->tk_reads_on_primary = true;
        }
    }

    private function tk_after_write(string $first_word): void
    {
        $this->tk_wrote = true;
        if ($this->tk_cookie_pending || $this->tk_mode === 'off' || $this->tk_pin_seconds <= 0
            || in_array($first_word, ['SET', 'SELECT', 'SHOW', 'WITH', 'DO', 'USE'], true)) {
            return;
        }
        $method = strtoupper((string) ($_SERVER['REQUEST_METHOD'] ?? 'GET'));
        if ($method === 'GET' || $method === 'HEAD' || headers_sent()) {
            return;
        }
        // One cookie per request, with the request's last GTID: sent just before the headers
        // go out, or at shutdown for a redirect that printed nothing.
        $this->tk_cookie_pending = true;
        if (!$this->tk_cookie_hooked) {
            $this->tk_cookie_hooked = true;
            header_register_callback([$this, 'tk_send_cookie']);
            register_shutdown_function([$this, 'tk_send_cookie']);
        }
    }

    /** Set the read-your-writes cookie, once, if this request wrote. */
    public function tk_send_cookie(): void
    {
        if (!$this->tk_cookie_pending || headers_sent()) {
            return;
        }
        $this->tk_cookie_pending = false;
        $expires = time() + (int) ceil($this->tk_pin_seconds);
        $value = (string) $expires;
        if ($this->tk_mode === 'gtid') {
            $gtid = $this->tk_fetch_last_gtid();
            if ($gtid !== null) {
                $value .= ':' . $gtid;
            }
        }
        $this->tk_cookie_set = $value;
        setcookie(self::COOKIE, $value, [
            'expires' => $expires,
            'path' => '/',
            'secure' => function_exists('is_ssl') && is_ssl(),
            'httponly' => true,
            'samesite' => 'Lax',
        ]);
    }

    /** The primary session's @@last_gtid (MariaDB), or null. */
    public function tk_fetch_last_gtid(): ?string
    {
        if ($this->tk_primary_link === null) {
            return $this->tk_last_gtid;
        }
        $result = @mysqli_query($this->tk_primary_link, 'SELECT @@last_gtid');
        if ($result instanceof mysqli_result) {
            $row = mysqli_fetch_row($result);
            mysqli_free_result($result);
            $gtid = is_array($row) ? (string) $row[0] : '';
            if (preg_match('/^\d+-\d+-\d+$/D', $gtid) === 1) {
                $this->tk_last_gtid = $gtid;
            }
        }
        return $this->tk_last_gtid;
    }

    // --- links -----------------------------------------------------------------------------

    /**
     * Open a link to $server, set up the way wpdb sets up its own. Null when it fails (logged).
     *
     * @param array{host: string, port: ?int, socket: ?string, user: string, password: string, name: string, label: string} $server
     */
    private function tk_open(array $server, bool $primary): ?mysqli
    {
        mysqli_report(MYSQLI_REPORT_OFF);
        $link = mysqli_init();
        if ($link === false) {
            return null;
        }
        $timeout = (int) ceil($this->tk_connect_timeout);
        mysqli_options($link, MYSQLI_OPT_CONNECT_TIMEOUT, $timeout);
        if ($this->tk_read_timeout > 0) {
            // mysqlnd waits a day by default: a server that accepts but never answers (hung,
            // stopped) would hold the request, the handshake included.
            mysqli_options($link, MYSQLI_OPT_READ_TIMEOUT, (int) ceil($this->tk_read_timeout));
        }
        $flags = defined('MYSQL_CLIENT_FLAGS') ? (int) MYSQL_CLIENT_FLAGS : 0;
        if ($primary && $this->tk_compress) {
            $flags |= MYSQLI_CLIENT_COMPRESS;
        }
        $host = $server['host'];
        if (str_contains($host, ':')) {
            $host = "[$host]";  // an IPv6 literal, as mysqlnd wants it
        }
        $ok = @mysqli_real_connect($link, $host, $server['user'], $server['password'], null,
            $server['port'], $server['socket'], $flags);
        if (!$ok) {
            error_log(sprintf('tenantkit: cannot connect to %s %s: %s', $primary ? 'primary' : 'replica',
                $server['label'], mysqli_connect_error() ?? 'unknown error'));
            return null;
        }
        $previous = $this->dbh;
        $this->dbh = $link;
        if (!$this->has_connected) {
            $this->init_charset();
        }
        $this->has_connected = true;
        $this->set_charset($link);
        $this->ready = true;
        $this->set_sql_mode();
        $this->dbh = $previous ?? $link;
        if (!@mysqli_select_db($link, $this->tk_database ?? $server['name'])) {
            error_log(sprintf('tenantkit: %s %s: cannot use database "%s": %s',
                $primary ? 'primary' : 'replica', $server['label'], $server['name'], mysqli_error($link)));
            @mysqli_close($link);
            return null;
        }
        return $link;
    }

    /** The primary link, connected on first use; null when the primary is down. */
    public function tk_primary(): ?mysqli
    {
        if ($this->tk_primary_link === null) {
            $this->tk_primary_link = count($this->tk_candidates) > 1
                ? $this->tk_open_candidate() : $this->tk_open($this->tk_primary, true);
        }
        return $this->tk_primary_link;
    }

    // --- failover: the one writable primary candidate ----------------------------------------

    private function tk_primary_state_file(): string
    {
        $labels = implode(',', array_column($this->tk_candidates, 'label'));
        return $this->tk_state_dir . '/tenantkit-wpdb-primary-' . md5($labels) . '.json';
    }

    /** The last verdict, if fresh: ['primary' => label|null, 'writable' => [labels]]. */
    private function tk_primary_verdict(): ?array
    {
        $raw = @file_get_contents($this->tk_primary_state_file());
        $state = is_string($raw) ? json_decode($raw, true) : null;
        if (!is_array($state) || !isset($state['checked'], $state['writable'])) {
            return null;
        }
        // Without a primary (an outage, a split brain), look again sooner: writes wait on it.
        $trusted = is_string($state['primary'] ?? null) ? $this->tk_primary_check_interval
            : min($this->tk_primary_check_interval, 0.5);
        return (float) $state['checked'] >= microtime(true) - $trusted ? $state : null;
    }

    /** Forget the verdict: the next request (or this one) probes every candidate again. */
    public function tk_forget_primary(): void
    {
        @unlink($this->tk_primary_state_file());
    }

    /** Open the writable candidate: the fresh verdict's, else probe them all (and keep it). */
    private function tk_open_candidate(): ?mysqli
    {
        $this->tk_primary_problem = null;
        $state = $this->tk_primary_verdict();
        if ($state !== null && is_string($state['primary'] ?? null)) {
            foreach ($this->tk_candidates as $candidate) {
                if ($candidate['label'] === $state['primary']) {
                    $link = $this->tk_open($candidate, true);
                    if ($link !== null) {
                        $this->tk_primary = $candidate;
                        return $link;
                    }
                }
            }
            $state = null;  // it refuses connections now: a failover under way? Probe.
        }
        if ($state === null) {
            return $this->tk_probe_candidates();
        }
        $this->tk_primary_problem = $this->tk_no_primary_message($state['writable']);
        return null;
    }

    /** Connect to every candidate, keep the one writable link; record the verdict. */
    private function tk_probe_candidates(): ?mysqli
    {
        $writable = [];
        $links = [];
        foreach ($this->tk_candidates as $candidate) {
            $link = $this->tk_open($candidate, true);
            if ($link === null) {
                continue;
            }
            $result = @mysqli_query($link, 'SELECT @@GLOBAL.read_only');
            $row = $result instanceof mysqli_result ? mysqli_fetch_row($result) : null;
            if (is_array($row) && (string) $row[0] === '0') {
                $writable[] = $candidate['label'];
                $links[$candidate['label']] = [$link, $candidate];
            } else {
                @mysqli_close($link);
            }
        }
        $previous = @file_get_contents($this->tk_primary_state_file());
        $old = is_string($previous) ? json_decode($previous, true) : null;
        $primary = count($writable) === 1 ? $writable[0] : null;
        if (!is_array($old) || ($old['writable'] ?? null) !== $writable) {
            error_log('tenantkit: ' . ($primary !== null ? "primary is now $primary"
                : $this->tk_no_primary_message($writable)));
        }
        $file = $this->tk_primary_state_file();
        $tmp = $file . '.' . bin2hex(random_bytes(4));
        $json = json_encode(['primary' => $primary, 'writable' => $writable, 'checked' => microtime(true)]);
        if (@file_put_contents($tmp, (string) $json) !== false) {
            @rename($tmp, $file);
        }
        @unlink($tmp);
        if ($primary === null) {
            foreach ($links as [$link]) {
                @mysqli_close($link);
            }
            $this->tk_primary_problem = $this->tk_no_primary_message($writable);
            return null;
        }
        $this->tk_primary = $links[$primary][1];
        return $links[$primary][0];
    }

    /** @param list<string> $writable */
    private function tk_no_primary_message(array $writable): string
    {
        if (count($writable) > 1) {
            return 'split brain: ' . implode(' and ', $writable) . ' are all writable (@@read_only = 0);'
                . ' writes are refused until exactly one is (SET GLOBAL read_only = 1 on the others)';
        }
        return 'no primary candidate is writable (' . implode(', ', array_column($this->tk_candidates, 'label'))
            . '); writes stop until one is promoted';
    }

    /** A write on the primary failed: read-only now, or the link is gone? Probe next time. */
    private function tk_primary_failed(?mysqli $used): void
    {
        if (count($this->tk_candidates) > 1 && $used !== null && $used === $this->tk_primary_link
            && in_array($used->errno, [1290, 1836, 2006, 2013], true)) {
            error_log("tenantkit: primary {$this->tk_primary['label']} failed a write ({$used->errno}: "
                . "{$used->error}): checking the primary candidates again");
            $this->tk_forget_primary();
            $this->tk_primary_link = null;
            $this->tk_calc_link = $this->tk_calc_link === $used ? null : $this->tk_calc_link;
        }
    }

    /** The link reads use: the first healthy replica, else the primary. */
    public function tk_reader(): ?mysqli
    {
        if ($this->tk_read_link !== null) {
            return $this->tk_read_link;
        }
        if (!$this->tk_read_link_tried) {
            $this->tk_read_link_tried = true;
            foreach ($this->tk_replicas as $replica) {
                if ($this->tk_is_down($replica['label'])) {
                    continue;
                }
                $link = $this->tk_open($replica, false);
                if ($link === null) {
                    $this->tk_mark_down($replica['label'], 'refuses connections');
                    continue;
                }
                $problem = $this->tk_replica_problem($link);
                if ($problem !== null) {
                    $this->tk_mark_down($replica['label'], $problem);
                    @mysqli_close($link);
                    continue;
                }
                $this->tk_clear_down($replica['label']);
                $this->tk_read_link = $link;
                $this->tk_read_label = $replica['label'];
                return $link;
            }
        }
        return null;
    }

    /** Why this replica should not serve reads (lag, replication stopped), or null. */
    private function tk_replica_problem(mysqli $link): ?string
    {
        if ($this->tk_lag_threshold <= 0) {
            return null;
        }
        $result = $this->tk_replica_status($link);
        if (!$result instanceof mysqli_result) {
            // No REPLICATION CLIENT / SLAVE MONITOR privilege: lag cannot be measured.
            $this->tk_note_once('lag-unknown', 'cannot measure replica lag (' . mysqli_error($link)
                . '); grant SLAVE MONITOR (MariaDB) or REPLICATION CLIENT to the replica user,'
                . ' or define TENANTKIT_LAG_THRESHOLD as 0');
            return null;
        }
        $status = mysqli_fetch_assoc($result);
        mysqli_free_result($result);
        if (is_array($status)) {  // MySQL >= 8.0.22 names, read as the classic ones
            $status += ['Slave_SQL_Running' => $status['Replica_SQL_Running'] ?? null,
                'Seconds_Behind_Master' => $status['Seconds_Behind_Source'] ?? null];
        }
        if (!is_array($status)) {
            return 'is not replicating (the replica status is empty)';
        }
        if (($status['Slave_SQL_Running'] ?? 'No') !== 'Yes') {
            return 'has replication stopped';
        }
        // With the SQL thread running, an unknown lag (NULL) means the I/O thread cannot reach
        // the primary: the replica has all it can get, and reads are better served than not.
        $lag = $status['Seconds_Behind_Master'] ?? null;
        if ($lag !== null && (float) $lag > $this->tk_lag_threshold) {
            return "lags {$lag}s (threshold {$this->tk_lag_threshold}s)";
        }
        return null;
    }

    /**
     * SHOW REPLICA STATUS (MariaDB >= 10.5.1, MySQL >= 8.0.22; MySQL 8.4 has only this one),
     * else SHOW SLAVE STATUS on a server that does not know it (a syntax error, 1064).
     */
    private function tk_replica_status(mysqli $link): mysqli_result|false
    {
        foreach (self::$tk_status_statements as $i => $statement) {
            $result = @mysqli_query($link, $statement);
            if ($result instanceof mysqli_result || $link->errno !== 1064
                || $i === count(self::$tk_status_statements) - 1) {
                return $result;
            }
        }
        return false;
    }

    private function tk_state_file(string $label): string
    {
        return $this->tk_state_dir . '/tenantkit-wpdb-' . md5($label) . '.down';
    }

    public function tk_is_down(string $label): bool
    {
        $until = @file_get_contents($this->tk_state_file($label));
        return $until !== false && (float) $until > microtime(true);
    }

    private function tk_mark_down(string $label, string $why): void
    {
        error_log(sprintf('tenantkit: replica %s %s: reads go elsewhere for %gs', $label, $why,
            $this->tk_cooldown));
        if ($this->tk_cooldown <= 0) {
            return;
        }
        $file = $this->tk_state_file($label);
        $tmp = $file . '.' . bin2hex(random_bytes(4));
        if (@file_put_contents($tmp, (string) (microtime(true) + $this->tk_cooldown)) !== false) {
            @rename($tmp, $file);
        }
        @unlink($tmp);
    }

    private function tk_clear_down(string $label): void
    {
        @unlink($this->tk_state_file($label));
    }

    private function tk_note_once(string $key, string $message): void
    {
        $file = $this->tk_state_dir . '/tenantkit-wpdb-' . md5($key . $this->tk_primary['label']) . '.note';
        $mtime = @filemtime($file);
        if ($mtime === false || $mtime < time() - 3600) {
            error_log('tenantkit: ' . $message);
            @touch($file);
        }
    }

    /** Wait for the cookie's GTID on the replica; false when it timed out or failed. */
    private function tk_replica_caught_up(mysqli $link): bool
    {
        $gtid = $this->tk_wait_gtid;
        $this->tk_wait_gtid = null;
        $sql = sprintf("SELECT MASTER_GTID_WAIT('%s', %F)", $gtid, $this->tk_gtid_wait_timeout);
        $result = @mysqli_query($link, $sql);
        if (!$result instanceof mysqli_result) {
            return false;
        }
        $row = mysqli_fetch_row($result);
        mysqli_free_result($result);
        return is_array($row) && (string) $row[0] === '0';
    }

    // --- wpdb overrides --------------------------------------------------------------------

    /** Connect the read link (the replica, else the primary), as wpdb connects its one link. */
    public function db_connect($allow_bail = true)
    {
        $this->is_mysql = true;
        $this->use_mysqli = true;
        $link = $this->tk_reader() ?? $this->tk_primary();
        if ($link === null) {
            $this->dbh = null;
            if ($allow_bail) {
                $this->tk_bail_down();
            }
            return false;
        }
        $this->dbh = $link;
        $this->ready = true;
        return true;
    }

    /** Whether $link's last error means the connection was lost (CONNECTION_LOST). */
    private static function tk_lost(mysqli $link): bool
    {
        return in_array($link->errno, self::CONNECTION_LOST, true);
    }

    /** Drop a dead link from every role it held (it is reconnected when next needed). */
    private function tk_forget(mysqli $link): void
    {
        if ($this->tk_primary_link === $link) {
            $this->tk_primary_link = null;
        }
        if ($this->tk_read_link === $link) {
            $this->tk_read_link = null;
            $this->tk_read_label = null;
        }
        if ($this->tk_calc_link === $link) {
            $this->tk_calc_link = null;
        }
        $this->tk_in_transaction = false;  // the server rolled it back with the connection
        // Not closed: wpdb may still hold it as $dbh (escaping works on a dead link, not on
        // a closed one).
    }

    /**
     * The connection was lost under a write (or inside a transaction): the statement may have
     * run, so it is not re-run; the request sees a clear error and the next statement gets a
     * new connection.
     */
    private function tk_lost_write(mysqli $link, string $query): void
    {
        $label = $link === $this->tk_primary_link ? $this->tk_primary['label']
            : ($this->tk_read_label ?? $this->tk_primary['label']);
        $what = $this->tk_statement_role === 'write' ? 'a write' : 'a transaction';
        $message = sprintf('tenantkit: the connection to %s was lost during %s (MySQL error %d: '
            . '%s); not retried, as it may have run: check, then try again', $label, $what,
            $link->errno, $link->error ?: 'connection lost');
        $this->tk_forget($link);
        $this->last_query = $query;
        $this->last_error = $message;
        $this->insert_id = 0;
        error_log($message);
    }

    /** The link is gone: a replica is replaced (never by anything but a read link). */
    public function check_connection($allow_bail = true)
    {
        $link = $this->dbh;
        if ($link instanceof mysqli && !self::tk_lost($link)
            && @mysqli_query($link, 'DO 1') !== false) {
            return true;
        }
        if ($this->tk_statement_role !== null
            && ($this->tk_statement_role === 'write' || $this->tk_in_transaction)) {
            return false;  // wpdb would re-run a write that may have run: query() reports it
        }
        $this->tk_reconnects++;
        if ($link !== null && $link === $this->tk_read_link && $this->tk_read_label !== null) {
            $this->tk_mark_down($this->tk_read_label, 'went away');
            $this->tk_read_link = null;
            $this->tk_read_label = null;
            $this->tk_calc_link = null;
            $next = $this->tk_primary();
            if ($next !== null) {
                $this->tk_read_link = $next;
                $this->dbh = $next;
                return true;
            }
        } else {
            if ($link instanceof mysqli) {
                $this->tk_forget($link);
            }
            $this->tk_primary_link = null;
            $next = $this->tk_primary();
            if ($next !== null) {
                $this->dbh = $next;
                return true;
            }
        }
        if (!$allow_bail || (function_exists('did_action') && did_action('template_redirect'))) {
            return false;
        }
        $this->tk_bail_down();
        return false;
    }

    /** Why there is no primary link: a split brain, no writable candidate, or unreachable. */
    private function tk_why_no_primary(): string
    {
        return $this->tk_primary_problem
            ?? "the primary database {$this->tk_primary['label']} is unreachable";
    }

    private function tk_bail_down(): void
    {
        if (function_exists('wp_load_translations_early')) {
            wp_load_translations_early();
        }
        $why = $this->tk_primary_problem !== null ? htmlspecialchars($this->tk_primary_problem, ENT_QUOTES)
            : 'the primary database at <code>' . htmlspecialchars($this->tk_primary['label'], ENT_QUOTES)
            . '</code> cannot be reached';
        $this->bail('<h1>Error establishing a database connection</h1><p>tenantkit: ' . $why
            . '.</p>', 'db_connect_fail');
        if (function_exists('dead_db')) {
            dead_db();
        }
    }

    /**
     * Route, then run through wpdb::query().
     *
     * @param string $query
     * @return int|bool
     */
    public function query($query)
    {
        if (!$this->ready || !is_string($query) || $query === '') {
            return parent::query($query);
        }
        [$role, $first] = $this->tk_route($query);
        $link = $this->tk_link_for($role);
        if ($link !== null && $this->tk_read_only !== null && $role === 'write') {
            $this->tk_read_only_write($link, $first);
        }
        if ($link === null) {
            // Only the primary can be missing here: a write, a read after this request's
            // write, or a read with no replica left.
            $this->last_query = $query;
            $this->last_error = 'tenantkit: ' . $this->tk_why_no_primary();
            $this->insert_id = 0;
            if (!(function_exists('did_action') && did_action('template_redirect'))) {
                $this->tk_bail_down();
            }
            $this->print_error();
            return false;
        }
        // wpdb::query() may run queries of its own (charset checks) before its statement:
        // those nested calls must hand $this->dbh back as they found it.
        $outer = $this->dbh;
        $this->dbh = $link;
        $this->tk_depth++;
        $this->tk_statement_role = $role;
        $reconnects = $this->tk_reconnects;
        try {
            $result = parent::query($query);
            $used = $this->dbh;
            if ($result === false && $used instanceof mysqli && self::tk_lost($used)) {
                if ($role === 'write' || $this->tk_in_transaction) {
                    $this->tk_lost_write($used, $query);
                } elseif ($this->tk_reconnects === $reconnects && $this->check_connection(false)) {
                    // The connection was lost under a read: once more, on a new link
                    // (a dead replica's reads go elsewhere). wpdb itself already retried a
                    // 2006 "gone away" once: then tk_reconnects moved and this is skipped.
                    $result = parent::query($query);
                    $used = $this->dbh;
                }
            }
        } finally {
            $this->tk_depth--;
            $this->tk_statement_role = null;
        }
        if ($result === false && $this->last_error === '' && $used instanceof mysqli && self::tk_lost($used)) {
            // wpdb's own reconnect (after a 2006) failed and left no reason.
            $this->last_error = "tenantkit: the connection was lost (MySQL error {$used->errno}) and"
                . ' nothing can take over: ' . $this->tk_why_no_primary();
        }
        if ($result !== false && ($first === 'START' || $first === 'BEGIN')) {
            $this->tk_in_transaction = true;
        } elseif ($first === 'COMMIT' || $first === 'ROLLBACK') {
            $this->tk_in_transaction = false;
        }
        if ($used instanceof mysqli) {
            $this->tk_counts[$used === $this->tk_primary_link ? 'primary' : 'replica']++;
        }
        if ($result === false && $used instanceof mysqli) {
            $this->tk_primary_failed($used);
        }
        if ($this->tk_depth > 0) {
            $this->dbh = $outer;
        }
        if ($result !== false && $used instanceof mysqli) {
            $this->tk_session_state($query, $role, $first, $used);
        }
        if ($role === 'calc') {
            $this->tk_calc_link = $used instanceof mysqli ? $used : null;
        } elseif ($role === 'write' && $result !== false) {
            $this->tk_after_write($first);
        } elseif ($role === 'write') {
            $this->tk_wrote = true;
        }
        return $result;
    }

    /**
     * A write inside START TRANSACTION READ ONLY (which ran on the replica): the primary joins
     * the read-only transaction first, so the server refuses the write (1792) as one server
     * would; COMMIT/ROLLBACK also end it on the links that run it.
     */
    private function tk_read_only_write(mysqli $link, string $first): void
    {
        if ($first === 'COMMIT' || $first === 'ROLLBACK') {
            foreach ($this->tk_read_only_links as $other) {
                if ($other !== $link) {
                    @mysqli_query($other, $first);
                }
            }
            $this->tk_read_only = null;
            $this->tk_read_only_links = [];
            return;
        }
        if (!in_array($link, $this->tk_read_only_links, true)) {
            @mysqli_query($link, $this->tk_read_only);
            $this->tk_read_only_links[] = $link;
        }
    }

    /** What a statement that succeeded on $link did to the session: USE, a read-only start. */
    private function tk_session_state(string $query, string $role, string $first, mysqli $link): void
    {
        if ($first === 'USE' && $role === 'write'
            && preg_match('/^\s*USE\s+(?:`((?:[^`]|``)+)`|([A-Za-z0-9_$]+))\s*;?\s*$/Di', $query, $m) === 1) {
            $name = ($m[2] ?? '') !== '' ? $m[2] : str_replace('``', '`', $m[1]);
            $this->tk_database = $name;
            foreach ([$this->tk_read_link, $this->tk_primary_link] as $other) {
                if ($other instanceof mysqli && $other !== $link) {
                    @mysqli_select_db($other, $name);
                }
            }
        } elseif ($role === 'read'
            && preg_match('~^(?:\s++|/\*(?![!M]).*?\*/|--[\x00-\x20\x7f][^\n]*+|#[^\n]*+)*+START\b~is', $query) === 1) {
            // The classifier reads START only as START TRANSACTION READ ONLY [...].
            $this->tk_read_only = $query;
            $this->tk_read_only_links = [$link];
        } elseif (($first === 'COMMIT' || $first === 'ROLLBACK') && $role === 'write') {
            $this->tk_read_only = null;
            $this->tk_read_only_links = [];
        }
    }

    /**
     * wpdb::select() on every link (and those opened later), not just the current one.
     *
     * @param string $db
     * @param mysqli|null $dbh
     */
    public function select($db, $dbh = null)
    {
        if ($dbh !== null) {
            return parent::select($db, $dbh);
        }
        $this->tk_database = (string) $db;
        $seen = [];
        foreach ([$this->tk_read_link, $this->tk_primary_link, $this->dbh] as $link) {
            if ($link instanceof mysqli && !isset($seen[spl_object_id($link)])) {
                $seen[spl_object_id($link)] = true;
                parent::select($db, $link);
            }
        }
    }

    /**
     * ['write'|'read'|'calc'|'found_rows', first word] for $query.
     *
     * @return array{0: string, 1: string}
     */
    public function tk_route(string $query): array
    {
        $first = strtoupper((string) strtok(ltrim($query, " \t\n\r("), " \t\n\r("));
        return [Tenantkit_SQL_Classifier::route($query), $first];
    }

    private function tk_link_for(string $role): ?mysqli
    {
        if ($role === 'write') {
            return $this->tk_primary();
        }
        if ($role === 'found_rows') {
            return $this->tk_calc_link ?? $this->tk_primary();
        }
        if ($this->tk_wrote) {
            // Never a replica after this request's write: it may not have the row yet. No
            // primary (it died since the write): the read fails rather than read stale data.
            return $this->tk_primary();
        }
        if ($this->tk_reads_on_primary) {
            return $this->tk_primary() ?? $this->tk_reader();
        }
        $link = $this->tk_reader();
        if ($link !== null && $this->tk_wait_gtid !== null && !$this->tk_replica_caught_up($link)) {
            $this->tk_reads_on_primary = true;   // the replica lacks this browser's last write
            return $this->tk_primary() ?? $link;
        }
        return $link ?? $this->tk_primary();
    }

    public function close()
    {
        $closed = false;
        $seen = [];
        foreach ([$this->tk_read_link, $this->tk_primary_link] as $link) {
            if ($link instanceof mysqli && !isset($seen[spl_object_id($link)])) {
                $seen[spl_object_id($link)] = true;
                $closed = @mysqli_close($link) || $closed;
            }
        }
        $this->tk_read_link = null;
        $this->tk_read_label = null;
        $this->tk_primary_link = null;
        $this->tk_calc_link = null;
        $this->tk_read_link_tried = false;
        $this->tk_read_only = null;
        $this->tk_read_only_links = [];
        $this->dbh = null;
        $this->ready = false;
        $this->has_connected = false;
        return $closed;
    }
}

}

if (!class_exists('Tenantkit_Events', false)) {

/**
 * WordPress hooks -> tenantkit invalidation events, queued during the request and published
 * once at shutdown (after every write, with the primary's @@last_gtid), one per post at most.
 */
final class Tenantkit_Events
{
    /** @var array<string, array<string, mixed>> */
    public static array $queue = [];
    /** @var list<array<string, mixed>> what flush() published, for tests and debugging */
    public static array $published = [];
    private static bool $registered = false;

    /** Options whose changes do not show on pages (TENANTKIT_PUBLISH_OPTIONS ignores them). */
    private const QUIET_OPTIONS = [
        'cron', 'rewrite_rules', 'recently_activated', 'active_plugins', 'uninstall_plugins',
        'auto_updater.lock', 'core_updater.lock', 'db_upgraded', 'recovery_keys',
        'recovery_mode_email_last_sent', 'akismet_spam_count', 'finished_updating_comment_type',
        'can_compress_scripts', 'auto_core_update_notified', 'https_detection_errors',
        'user_count', 'admin_email_lifespan', 'initial_db_version', 'db_version',
    ];

    public static function register(): void
    {
        if (self::$registered || !function_exists('add_action')) {
            return;
        }
        self::$registered = true;
        add_action('comment_post', [self::class, 'comment_post'], 10, 2);
        add_action('wp_set_comment_status', [self::class, 'wp_set_comment_status'], 10, 2);
        add_action('transition_comment_status', [self::class, 'transition_comment_status'], 10, 3);
        add_action('edit_comment', [self::class, 'edit_comment'], 10, 1);
        add_action('delete_comment', [self::class, 'delete_comment'], 10, 2);
        add_action('save_post', [self::class, 'save_post'], 10, 2);
        add_action('transition_post_status', [self::class, 'transition_post_status'], 10, 3);
        add_action('trashed_post', [self::class, 'trashed_post'], 10, 1);
        add_action('deleted_post', [self::class, 'deleted_post'], 10, 2);
        add_action('switch_theme', [self::class, 'switch_theme'], 10, 0);
        if (defined('TENANTKIT_PUBLISH_OPTIONS') && TENANTKIT_PUBLISH_OPTIONS) {
            add_action('updated_option', [self::class, 'updated_option'], 10, 1);
        }
        add_action('shutdown', [self::class, 'flush'], 1000, 0);
    }

    // --- comments --------------------------------------------------------------------------

    /** @param int|string $approved 1, 0, "spam" or "trash" */
    public static function comment_post(mixed $comment_id, mixed $approved = 0): void
    {
        if ((string) $approved === '1') {
            self::comment_event('comment_posted', $comment_id);
        }
    }

    public static function wp_set_comment_status(mixed $comment_id, mixed $status = ''): void
    {
        if ($status === 'approve' || $status === '1') {
            self::comment_event('comment_changed', $comment_id);
        }
    }

    /** Approved -> anything, or anything -> approved: the page changes. */
    public static function transition_comment_status(mixed $new, mixed $old, mixed $comment = null): void
    {
        if (($new === 'approved' || $old === 'approved') && is_object($comment)) {
            self::comment_event('comment_changed', $comment->comment_ID ?? 0, $comment);
        }
    }

    public static function edit_comment(mixed $comment_id): void
    {
        $comment = function_exists('get_comment') ? get_comment($comment_id) : null;
        if (is_object($comment) && (string) $comment->comment_approved === '1') {
            self::comment_event('comment_changed', $comment_id, $comment);
        }
    }

    public static function delete_comment(mixed $comment_id, mixed $comment = null): void
    {
        if (!is_object($comment) && function_exists('get_comment')) {
            $comment = get_comment($comment_id);
        }
        if (is_object($comment) && (string) $comment->comment_approved === '1') {
            self::comment_event('comment_changed', $comment_id, $comment);
        }
    }

    private static function comment_event(string $type, mixed $comment_id, ?object $comment = null): void
    {
        if ($comment === null && function_exists('get_comment')) {
            $comment = get_comment($comment_id);
        }
        if (!is_object($comment)) {
            return;
        }
        $post_id = (int) ($comment->comment_post_ID ?? 0);
        self::queue(['type' => $type, 'post_id' => $post_id > 0 ? $post_id : null, 'approved' => true]);
    }

    // --- posts -----------------------------------------------------------------------------

    public static function save_post(mixed $post_id, mixed $post = null): void
    {
        if (is_object($post) && ($post->post_status ?? '') === 'publish' && self::is_public($post)) {
            self::post_event('post_edited', $post);
        }
    }

    public static function transition_post_status(mixed $new, mixed $old, mixed $post = null): void
    {
        if (!is_object($post) || !self::is_public($post) || ($new !== 'publish' && $old !== 'publish')) {
            return;
        }
        self::post_event($new === 'trash' ? 'post_deleted' : 'post_edited', $post);
    }

    public static function trashed_post(mixed $post_id): void
    {
        $post = function_exists('get_post') ? get_post($post_id) : null;
        $was = function_exists('get_post_meta') ? get_post_meta((int) $post_id, '_wp_trash_meta_status', true) : '';
        if (is_object($post) && $was === 'publish' && self::is_public($post)) {
            self::post_event('post_deleted', $post);
        }
    }

    public static function deleted_post(mixed $post_id, mixed $post = null): void
    {
        if (is_object($post) && ($post->post_status ?? '') === 'publish' && self::is_public($post)) {
            self::post_event('post_deleted', $post);
        }
    }

    private static function is_public(object $post): bool
    {
        $type = (string) ($post->post_type ?? '');
        if ($type === '' || $type === 'revision' || $type === 'nav_menu_item') {
            return false;
        }
        return !function_exists('is_post_type_viewable') || is_post_type_viewable($type);
    }

    private static function post_event(string $type, object $post): void
    {
        $terms = [];
        $post_id = (int) ($post->ID ?? 0);
        if ($post_id > 0 && function_exists('get_object_taxonomies') && function_exists('wp_get_object_terms')) {
            $taxonomies = get_object_taxonomies((string) $post->post_type);
            if ($taxonomies !== []) {
                $ids = wp_get_object_terms($post_id, $taxonomies, ['fields' => 'ids']);
                if (is_array($ids)) {
                    $terms = array_values(array_map('intval', $ids));
                }
            }
        }
        $author = (int) ($post->post_author ?? 0);
        self::queue(['type' => $type, 'post_id' => $post_id > 0 ? $post_id : null,
            'terms' => $terms, 'author' => $author > 0 ? $author : null]);
    }

    // --- the site --------------------------------------------------------------------------

    public static function switch_theme(): void
    {
        self::queue(['type' => 'site_changed']);
    }

    public static function updated_option(mixed $option): void
    {
        $option = (string) $option;
        if (str_starts_with($option, '_transient') || str_starts_with($option, '_site_transient')
            || in_array($option, self::QUIET_OPTIONS, true)) {
            return;
        }
        self::queue(['type' => 'site_changed']);
    }

    // --- queue and publish -----------------------------------------------------------------

    /** @param array<string, mixed> $event */
    public static function queue(array $event): void
    {
        $key = $event['type'] . ':' . ($event['post_id'] ?? '');
        if (isset(self::$queue[$key])) {
            // One event per post and type; a later one (terms after an edit) wins.
            $event += self::$queue[$key];
        }
        self::$queue[$key] = $event;
    }

    /** Publish the queued events (at shutdown). Returns how many were handed over. */
    public static function flush(): int
    {
        if (self::$queue === []) {
            return 0;
        }
        $events = array_values(self::$queue);
        self::$queue = [];
        $site = defined('TENANTKIT_SITE') ? TENANTKIT_SITE : null;
        $bus = defined('TENANTKIT_BUS') ? TENANTKIT_BUS : (defined('TENANTKIT_PURGE_DIR') ? TENANTKIT_PURGE_DIR : null);
        $fallback = defined('TENANTKIT_PURGE_DIR') ? TENANTKIT_PURGE_DIR : null;
        if (!is_string($site) || !is_string($bus) || $bus === '') {
            error_log('tenantkit: ' . count($events) . ' invalidation event(s) not published: define '
                . 'TENANTKIT_SITE and TENANTKIT_BUS (or TENANTKIT_PURGE_DIR) in wp-config.php');
            return 0;
        }
        global $wpdb;
        $gtid = $wpdb instanceof Tenantkit_DB ? $wpdb->tk_fetch_last_gtid() : null;
        $sent = 0;
        foreach ($events as $event) {
            $event += ['v' => 1, 'site' => $site, 'post_id' => null, 'approved' => false,
                'terms' => [], 'author' => null, 'paths' => [], 'tags' => [], 'host' => null,
                'gtid' => $gtid, 'id' => bin2hex(random_bytes(16)), 'ts' => microtime(true),
                'origin' => 'php'];
            if (tenantkit_publish($event, $bus, is_string($fallback) ? $fallback : null)) {
                $sent++;
                self::$published[] = $event;
            }
        }
        return $sent;
    }
}

}

// wp-admin/setup-config.php loads WordPress before any wp-config.php exists (no DB_HOST, no
// TENANTKIT_*), and checks the credentials typed into its form with a wpdb of its own: the
// drop-in stays out of the way there (it has nothing to route yet).
if (defined('ABSPATH') && class_exists('Tenantkit_DB', false) && !isset($GLOBALS['wpdb'])
    && !(defined('WP_SETUP_CONFIG') && !defined('DB_HOST') && !defined('TENANTKIT_DB_PRIMARY'))) {
    Tenantkit_Events::register();
    $GLOBALS['wpdb'] = new Tenantkit_DB(
        defined('DB_USER') ? DB_USER : '',
        defined('DB_PASSWORD') ? DB_PASSWORD : '',
        defined('DB_NAME') ? DB_NAME : '',
        defined('DB_HOST') ? DB_HOST : ''
    );
}
