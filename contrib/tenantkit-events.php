<?php
/**
 * tenantkit-events.php: publish tenantkit invalidation events from PHP, and normalise hosts.
 *
 * Shared by the WordPress drop-in (contrib/wp-db-router.php) and the PunBB patch. Plain PHP 8.2,
 * no extension beyond the standard ones (intl is used for IDN host names when present).
 *
 *     require_once __DIR__ . '/tenantkit-events.php';
 *
 *     // To the Redis stream (RESP over a plain socket; optional ?stream=, ?maxlen=, ?timeout=):
 *     tenantkit_publish(
 *         ['type' => 'comment_posted', 'site' => 'blog', 'post_id' => 42, 'approved' => true],
 *         'redis://127.0.0.1:6379/0',
 *         '/var/cache/tenantkit/blog/.purge'     // trigger-file fallback when Redis is down
 *     );
 *     // Or as a trigger file in the site's .purge/ directory:
 *     tenantkit_publish(['type' => 'purge', 'site' => 'blog', 'all' => true],
 *                       '/var/cache/tenantkit/blog/.purge');
 *
 *     tenantkit_send_tags([TENANTKIT_TAG_POST . 42, TENANTKIT_TAG_HOME]);  // X-Tenantkit-Tags
 *
 *     tenantkit_normalize_host('Blog.Example.COM.:8080');   // "blog.example.com"
 *     tenantkit_normalize_host('bad/host');                 // null
 *
 * The wire format is README.md's "Invalidation events": one JSON object, at most 64 KiB, with
 * `v`, `id`, `ts` and `origin` filled in here when missing. On the Redis stream it is the one
 * field `event` of `XADD <stream> MAXLEN ~ <maxlen> * event <json>`; as a trigger file it is
 * written to a temporary name in the directory and renamed to `<id>.json`, so a reader never
 * sees half a file.
 *
 * tenantkit_publish() never throws and never emits a PHP warning: it returns true when the
 * event was handed over (to the bus, or to the fallback directory when the bus failed), and
 * false otherwise; every failure is reported with error_log().
 */

declare(strict_types=1);

if (!function_exists('tenantkit_publish')) {

define('TENANTKIT_EVENT_MAX_BYTES', 65536);
define('TENANTKIT_EVENT_TYPES', [
    'comment_posted', 'comment_changed', 'post_edited', 'post_deleted', 'site_changed', 'purge',
]);
define('TENANTKIT_DEFAULT_STREAM', 'tenantkit:events');
define('TENANTKIT_DEFAULT_MAXLEN', 10000);
define('TENANTKIT_DEFAULT_TIMEOUT', 0.5);
define('TENANTKIT_TAGS_HEADER', 'X-Tenantkit-Tags');
define('TENANTKIT_TAGS_MAX_BYTES', 4000);
// BEGIN generated from tenantkit/cache/tags.py by
// `python -m tenantkit.export.tags`: do not edit (README: "Cache tags")
define('TENANTKIT_TAG_POST', 'post:');
define('TENANTKIT_TAG_TERM', 'term:');
define('TENANTKIT_TAG_AUTHOR', 'author:');
define('TENANTKIT_TAG_HOME', 'home');
define('TENANTKIT_TAG_FEED', 'feed');
define('TENANTKIT_TAG_TOPIC', 'topic:');
define('TENANTKIT_TAG_FORUM', 'forum:');
define('TENANTKIT_TAG_INDEX', 'index');
define('TENANTKIT_TAG_SITE', 'site');
// END generated from tenantkit/cache/tags.py

/**
 * Send the X-Tenantkit-Tags header naming what the page shows (the tag vocabulary above:
 * TENANTKIT_TAG_POST . 42, TENANTKIT_TAG_HOME, ...). Duplicates and anything that is not a
 * tag are dropped; a list longer than TENANTKIT_TAGS_MAX_BYTES becomes TENANTKIT_TAG_SITE
 * (purged by every purge of the site: never too little). Returns the tags sent, or null when
 * headers were already sent (logged).
 *
 * @param iterable<mixed> $tags
 * @return list<string>|null
 */
function tenantkit_send_tags(iterable $tags): ?array
{
    $kept = [];
    foreach ($tags as $tag) {
        if (is_string($tag) && preg_match('/^[a-z][a-z0-9_-]*(:[0-9]+)?$/D', $tag) === 1) {
            $kept[$tag] = true;
        }
    }
    $kept = array_keys($kept);
    if ($kept === [] || strlen(implode(' ', $kept)) > TENANTKIT_TAGS_MAX_BYTES) {
        $kept = [TENANTKIT_TAG_SITE];
    }
    if (headers_sent($file, $line)) {
        error_log('tenantkit: X-Tenantkit-Tags not sent: output started at ' . $file . ':' . $line);
        return null;
    }
    header(TENANTKIT_TAGS_HEADER . ': ' . implode(' ', $kept));
    return $kept;
}

/**
 * Publish one invalidation event to $bus: "redis://[:password@]host[:port][/db][?stream=name]"
 * or a trigger-file directory. On a Redis failure the event goes to $fallback_dir (when given).
 *
 * @param array<string, mixed> $event
 */
function tenantkit_publish(array $event, string $bus, ?string $fallback_dir = null): bool
{
    try {
        $json = tenantkit_event_json($event);
        if ($json === null) {
            return false;
        }
        [$json, $id] = $json;
        if (preg_match('~^[a-z][a-z0-9+.-]*://~i', $bus) === 1) {
            $error = tenantkit_redis_xadd($bus, $json);
            if ($error === null) {
                return true;
            }
            error_log('tenantkit: event ' . $id . ' not published to ' . tenantkit_mask_url($bus)
                . ': ' . $error
                . ($fallback_dir !== null ? '; writing it to ' . $fallback_dir . ' instead' : ''));
            if ($fallback_dir === null || $fallback_dir === '') {
                return false;
            }
            $bus = $fallback_dir;
        }
        $error = tenantkit_write_trigger_file($bus, $id, $json);
        if ($error !== null) {
            error_log('tenantkit: event ' . $id . ' not written: ' . $error);
            return false;
        }
        return true;
    } catch (\Throwable $exc) {
        error_log('tenantkit: event not published: ' . get_class($exc) . ': ' . $exc->getMessage());
        return false;
    }
}

/**
 * Check the event, fill v/id/ts/origin, encode it. Returns [json, id], or null (logged).
 *
 * @param array<string, mixed> $event
 * @return array{0: string, 1: string}|null
 */
function tenantkit_event_json(array $event): ?array
{
    $event['v'] ??= 1;
    if (!isset($event['id']) || !is_string($event['id']) || $event['id'] === '') {
        $event['id'] = bin2hex(random_bytes(16));
    }
    $event['ts'] ??= microtime(true);
    $event['origin'] ??= 'php';
    $problem = null;
    if ($event['v'] !== 1) {
        $problem = '"v" must be 1';
    } elseif (!isset($event['type']) || !in_array($event['type'], TENANTKIT_EVENT_TYPES, true)) {
        $problem = '"type" must be one of ' . implode(', ', TENANTKIT_EVENT_TYPES);
    } elseif (!isset($event['site']) || !is_string($event['site'])
        || preg_match('/^[a-z0-9][a-z0-9-]{0,62}$/D', $event['site']) !== 1) {
        $problem = '"site" must be a site name matching ^[a-z0-9][a-z0-9-]{0,62}$';
    } elseif (preg_match('/^[A-Za-z0-9._-]{1,128}$/D', $event['id']) !== 1) {
        // The id becomes a file name: keep it to a safe alphabet.
        $problem = '"id" may only contain letters, digits, ".", "_" and "-" (at most 128)';
    }
    if ($problem !== null) {
        error_log('tenantkit: event dropped: ' . $problem);
        return null;
    }
    $json = json_encode($event, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
        | JSON_PRESERVE_ZERO_FRACTION | JSON_INVALID_UTF8_SUBSTITUTE);
    if ($json === false) {
        error_log('tenantkit: event dropped: cannot encode it as JSON: ' . json_last_error_msg());
        return null;
    }
    if (strlen($json) > TENANTKIT_EVENT_MAX_BYTES) {
        error_log('tenantkit: event dropped: ' . strlen($json) . ' bytes of JSON, the limit is '
            . TENANTKIT_EVENT_MAX_BYTES . ' (send a purge with "all": true instead of long lists)');
        return null;
    }
    return [$json, $event['id']];
}

/** A bus URL with its password replaced by ********, for log lines. */
function tenantkit_mask_url(string $url): string
{
    return (string) preg_replace('~^([a-z][a-z0-9+.-]*://[^:@/]*:)[^@/]*@~i', '$1********@', $url);
}

/**
 * XADD $json to the stream named by the redis:// URL $bus. Returns null on success, else why not.
 */
function tenantkit_redis_xadd(string $bus, string $json): ?string
{
    $url = parse_url($bus);
    if ($url === false || !isset($url['host']) || ($url['scheme'] ?? '') !== 'redis') {
        return 'not a redis:// URL (write redis://host:port/db, or a directory for trigger files)';
    }
    $query = [];
    parse_str($url['query'] ?? '', $query);
    $path = trim($url['path'] ?? '', '/');
    if ($path !== '' && preg_match('/^[0-9]{1,5}$/D', $path) !== 1) {
        return 'the database in the URL path must be a number, got "' . $path . '"';
    }
    $stream = is_string($query['stream'] ?? null) && $query['stream'] !== ''
        ? $query['stream'] : TENANTKIT_DEFAULT_STREAM;
    $maxlen = is_string($query['maxlen'] ?? null) && ctype_digit($query['maxlen'])
        ? (int) $query['maxlen'] : TENANTKIT_DEFAULT_MAXLEN;
    $timeout = is_string($query['timeout'] ?? null) && is_numeric($query['timeout'])
        ? max(0.01, (float) $query['timeout']) : TENANTKIT_DEFAULT_TIMEOUT;

    $commands = [];
    if (isset($url['pass'])) {
        $user = rawurldecode($url['user'] ?? '');
        $pass = rawurldecode($url['pass']);
        $commands[] = $user !== '' ? ['AUTH', $user, $pass] : ['AUTH', $pass];
    }
    if ($path !== '') {
        $commands[] = ['SELECT', $path];
    }
    $commands[] = ['XADD', $stream, 'MAXLEN', '~', (string) $maxlen, '*', 'event', $json];

    $host = $url['host'];
    $target = 'tcp://' . (str_contains($host, ':') && $host[0] !== '[' ? "[$host]" : $host)
        . ':' . ($url['port'] ?? 6379);
    $errno = 0;
    $errstr = '';
    $sock = @stream_socket_client($target, $errno, $errstr, $timeout);
    if ($sock === false) {
        return 'cannot connect to ' . $target . ': ' . ($errstr !== '' ? $errstr : "error $errno");
    }
    try {
        stream_set_timeout($sock, (int) $timeout, (int) (fmod($timeout, 1.0) * 1e6));
        // One command at a time: a failed AUTH or SELECT must stop the XADD.
        foreach ($commands as $command) {
            $wire = '*' . count($command) . "\r\n";
            foreach ($command as $arg) {
                $wire .= '$' . strlen($arg) . "\r\n" . $arg . "\r\n";
            }
            for ($sent = 0; $sent < strlen($wire); $sent += $n) {
                $n = @fwrite($sock, substr($wire, $sent));
                if ($n === false || $n === 0) {
                    return 'the connection to ' . $target . ' failed while sending';
                }
            }
            $reply = tenantkit_resp_read($sock);
            if ($reply === null) {
                $meta = stream_get_meta_data($sock);
                return $meta['timed_out'] ? "no answer within {$timeout}s from $target"
                    : 'the connection to ' . $target . ' closed before the answer';
            }
            if (str_starts_with($reply, '-')) {
                return $command[0] . ' failed: ' . substr($reply, 1);
            }
        }
        return null;
    } finally {
        fclose($sock);
    }
}

/**
 * Read one RESP reply; returns its first line ("+OK", "-ERR ...", "$22", ...) after consuming
 * the whole reply, or null when the connection timed out or closed.
 *
 * @param resource $sock
 */
function tenantkit_resp_read($sock, int $depth = 0): ?string
{
    $line = fgets($sock, 65536);
    if ($line === false || !str_ends_with($line, "\r\n") || $depth > 8) {
        return null;
    }
    $line = substr($line, 0, -2);
    $kind = $line[0] ?? '';
    if ($kind === '$') {
        $len = (int) substr($line, 1);
        if ($len >= 0) {
            $body = '';
            while (strlen($body) < $len + 2) {
                $chunk = fread($sock, $len + 2 - strlen($body));
                if ($chunk === false || $chunk === '') {
                    return null;
                }
                $body .= $chunk;
            }
        }
    } elseif ($kind === '*') {
        for ($i = (int) substr($line, 1); $i > 0; $i--) {
            if (tenantkit_resp_read($sock, $depth + 1) === null) {
                return null;
            }
        }
    }
    return $line;
}

/** Write $json to $dir/<id>.json atomically. Returns null on success, else why not. */
function tenantkit_write_trigger_file(string $dir, string $id, string $json): ?string
{
    if ($dir === '' || str_contains($dir, "\0")) {
        return 'no trigger-file directory given';
    }
    $dir = rtrim($dir, '/');
    if ($dir === '') {
        $dir = '/';
    }
    if (!is_dir($dir) && !@mkdir($dir, 0775, true) && !is_dir($dir)) {
        return 'the trigger-file directory ' . $dir . ' does not exist and cannot be created ('
            . (error_get_last()['message'] ?? 'unknown error') . ')';
    }
    $tmp = $dir . '/.' . $id . '.' . bin2hex(random_bytes(4)) . '.tmp';
    $final = $dir . '/' . $id . '.json';
    $handle = @fopen($tmp, 'xb');
    if ($handle === false) {
        return 'cannot create ' . $tmp . ' (' . (error_get_last()['message'] ?? 'unknown error')
            . '; the web server user needs write access to ' . $dir . ')';
    }
    $done = false;
    try {
        $written = @fwrite($handle, $json);
        $closed = @fclose($handle);
        if ($written !== strlen($json) || !$closed) {
            return 'cannot write ' . $tmp . ' (disk full?)';
        }
        @chmod($tmp, 0664);
        if (!@rename($tmp, $final)) {
            return 'cannot rename ' . $tmp . ' to ' . $final . ' ('
                . (error_get_last()['message'] ?? 'unknown error') . ')';
        }
        $done = true;
        return null;
    } finally {
        if (!$done) {
            @unlink($tmp);
        }
    }
}

/**
 * RFC 5952 text of a 16-byte IPv6 address, as Python's ipaddress.IPv6Address.compressed gives
 * it: lowercase hex groups without leading zeros, the first longest run (two or more) of zero
 * groups as "::". (inet_ntop differs: it writes IPv4-mapped addresses in dotted form.)
 */
function tenantkit_ipv6_compressed(string $packed): string
{
    $groups = array_map(static fn (int $g): string => dechex($g), array_values(unpack('n8', $packed)));
    $best = -1;
    $best_len = 0;
    for ($i = 0; $i < 8; $i++) {
        $len = 0;
        while ($i + $len < 8 && $groups[$i + $len] === '0') {
            $len++;
        }
        if ($len > $best_len) {
            [$best, $best_len] = [$i, $len];
        }
    }
    if ($best_len < 2) {
        return implode(':', $groups);
    }
    return implode(':', array_slice($groups, 0, $best)) . '::'
        . implode(':', array_slice($groups, $best + $best_len));
}

/**
 * Normalise a Host header the way tenantkit.hosts.normalize_host does: port stripped (IPv6
 * literals in brackets kept), one trailing dot dropped, lowercase, IDNA A-labels. Returns null
 * for anything that is not a valid host name.
 */
function tenantkit_normalize_host(string $raw): ?string
{
    if ($raw === '' || strlen($raw) > 1024 || preg_match('/[\x00-\x20\x7f\/\\\\]/', $raw) === 1) {
        return null;
    }
    $port = null;
    if ($raw[0] === '[') {
        $end = strpos($raw, ']');
        if ($end === false) {
            return null;
        }
        $literal = substr($raw, 1, $end - 1);
        $rest = substr($raw, $end + 1);
        if ($rest !== '') {
            if ($rest[0] !== ':') {
                return null;
            }
            $port = substr($rest, 1);
        }
        $packed = str_contains($literal, '%') ? false : @inet_pton($literal);
        if ($packed === false || strlen($packed) !== 16) {
            return null;
        }
        $host = '[' . tenantkit_ipv6_compressed($packed) . ']';
    } else {
        $colon = strrpos($raw, ':');
        $host = $raw;
        if ($colon !== false) {
            $host = substr($raw, 0, $colon);
            $port = substr($raw, $colon + 1);
        }
    }
    if ($port !== null
        && (preg_match('/^[0-9]{1,5}$/D', $port) !== 1 || (int) $port > 65535)) {
        return null;
    }
    if ($host !== '' && $host[0] === '[') {
        return $host;
    }
    if (str_ends_with($host, '.')) {
        $host = substr($host, 0, -1);
    }
    if ($host === '' || str_contains($host, ':')) {
        return null;
    }
    if (preg_match('/[^\x21-\x7e]/', $host) === 1) {
        if (!function_exists('idn_to_ascii')) {
            return null;    // Without intl, non-ASCII names cannot be converted: refuse them.
        }
        $info = [];
        $ascii = @idn_to_ascii($host, IDNA_NONTRANSITIONAL_TO_ASCII | IDNA_CHECK_BIDI
            | IDNA_CHECK_CONTEXTJ, INTL_IDNA_VARIANT_UTS46, $info);
        if (!is_string($ascii) || $ascii === '' || ($info['errors'] ?? 0) !== 0) {
            return null;
        }
        $host = $ascii;
    }
    $host = strtolower($host);
    if (strlen($host) > 253) {
        return null;
    }
    foreach (explode('.', $host) as $label) {
        if ($label === '' || strlen($label) > 63 || preg_match('/^[a-z0-9_-]+$/D', $label) !== 1) {
            return null;
        }
    }
    return $host;
}

}
