<?php
// Test driver: reads {"require": [files], "calls": [[function, [args...]], ...]} as JSON on
// stdin, runs each call and prints the list of results as JSON on stdout.
declare(strict_types=1);
error_reporting(E_ALL);
set_error_handler(static function (int $no, string $msg, string $file, int $line): bool {
    if ((error_reporting() & $no) === 0) {
        return false;   // silenced with @: the code under test handles it
    }
    throw new ErrorException("PHP notice/warning: $msg at $file:$line", 0, $no, $file, $line);
});
$input = json_decode((string) stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
foreach ($input['require'] as $file) {
    require_once $file;
}
$results = [];
foreach ($input['calls'] as [$function, $args]) {
    $results[] = $function(...$args);
}
echo json_encode($results, JSON_THROW_ON_ERROR | JSON_PRESERVE_ZERO_FRACTION);
