<?php
// Test driver: load WordPress from the tree in argv[1] (SHORTINIT unless TK_FULL=1), run the
// operations read as JSON from stdin against $wpdb and print {"results": [...], "notices": [...]}.
// TK_COOKIE sets the read-your-writes cookie, TK_METHOD the request method.
$notices = [];
set_error_handler(static function (int $no, string $msg, string $file, int $line) use (&$notices): bool {
    if ((error_reporting() & $no) !== 0) {
        $notices[] = "$msg at $file:$line";
    }
    return true;
});
error_reporting(E_ALL);
$tree = $argv[1];
$ops = json_decode((string) stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
$_SERVER['HTTP_HOST'] = getenv('TK_HOST') ?: '127.0.0.1';
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['REQUEST_METHOD'] = getenv('TK_METHOD') ?: 'GET';
$_SERVER['SERVER_NAME'] = '127.0.0.1';
$_SERVER['SERVER_PORT'] = '80';
if (getenv('TK_COOKIE') !== false) {
    $_COOKIE['tenantkit_wp_pin'] = getenv('TK_COOKIE');
}
if (getenv('TK_FULL') !== '1') {
    define('SHORTINIT', true);
}
if (getenv('TK_INSTALLING') === '1') {
    define('WP_INSTALLING', true);
}
$output = static function () use (&$results, &$notices): void {
    echo "\n@@TK@@", json_encode(['results' => $results, 'notices' => $notices],
        JSON_PARTIAL_OUTPUT_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
};
$results = [];
register_shutdown_function($output);
require $tree . '/wp-load.php';
global $wpdb;
foreach ($ops as $op) {
    [$name, $arg] = $op + [1 => null];
    switch ($name) {
        case 'query':
            $value = $wpdb->query($arg);
            $results[] = ['value' => $value, 'error' => $wpdb->last_error, 'insert_id' => $wpdb->insert_id];
            break;
        case 'get_var':
            $results[] = $wpdb->get_var($arg);
            break;
        case 'get_col':
            $results[] = $wpdb->get_col($arg);
            break;
        case 'counts':
            $results[] = $wpdb->tk_counts;
            break;
        case 'primary_connected':
            $results[] = $wpdb->tk_primary_link !== null;
            break;
        case 'primary_status':
            $res = mysqli_query($wpdb->tk_primary_link, "SHOW SESSION STATUS LIKE '" . $arg . "'");
            $results[] = mysqli_fetch_row($res)[1] ?? null;
            break;
        case 'cookie':
            $wpdb->tk_send_cookie();
            $results[] = $wpdb->tk_cookie_set;
            break;
        case 'flush_events':
            $results[] = ['sent' => Tenantkit_Events::flush(), 'published' => Tenantkit_Events::$published];
            Tenantkit_Events::$published = [];
            break;
        case 'php':
            $results[] = eval($arg);
            break;
        default:
            throw new RuntimeException("unknown op $name");
    }
}
