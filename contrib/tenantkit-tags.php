<?php
/**
 * Plugin Name: tenantkit cache tags
 * Description: Tags every cacheable front-end page with X-Tenantkit-Tags (what it shows), so
 *              that tenantkit's targeted purges refresh exactly the pages a change touches.
 * Version: 1
 *
 * A must-use plugin: link (or copy) it to wp-content/mu-plugins/tenantkit-tags.php, with
 * contrib/tenantkit-events.php next to its target (or define TENANTKIT_EVENTS_FILE); the
 * drop-in contrib/wp-db-router.php publishes the events that purge these tags. The tags are the
 * vocabulary of tenantkit/cache/tags.py (README: "Cache tags"), as the TENANTKIT_TAG_*
 * constants of tenantkit-events.php:
 *
 *     single post or page      post:ID, term:T for each of its terms, author:A
 *     front page, blog page    home
 *     category/tag/term page   term:T
 *     author page              author:A
 *     date archive, search,    home
 *     404, sitemap, other
 *     feed                     feed (+ post:ID for a post's comment feed, home for the site's)
 *     every page               post:ID of each post it lists (the loop's the_post)
 *
 * The header goes out when the page is complete (an output buffer opened at template_redirect),
 * so the posts a block theme or a classic theme lists while rendering are counted. A page that
 * is flushed before its end, or would need more than TENANTKIT_TAGS_MAX_BYTES of tags, says
 * `site` instead: purged by any change. Only anonymous GET/HEAD requests for front-end pages
 * are tagged; logged-in users, previews, the admin, AJAX and the REST API are left alone (the
 * shim does not store them anyway). The shim strips the header before the visitor sees it.
 */

declare(strict_types=1);

if (!defined('ABSPATH')) {
    return;
}

if (!function_exists('tenantkit_send_tags')) {
    $tenantkit_events_file = defined('TENANTKIT_EVENTS_FILE') ? (string) TENANTKIT_EVENTS_FILE
        : __DIR__ . '/tenantkit-events.php';
    if (is_file($tenantkit_events_file)) {
        require_once $tenantkit_events_file;
    }
    unset($tenantkit_events_file);
}

if (function_exists('tenantkit_send_tags') && !class_exists('Tenantkit_Tags', false)) {

final class Tenantkit_Tags
{
    /** @var array<string, true> the tags of this page so far */
    public static array $tags = [];
    /** @var list<string>|null what was sent, for tests and debugging */
    public static ?array $sent = null;
    private static bool $active = false;

    public static function register(): void
    {
        add_action('template_redirect', [self::class, 'start'], 0, 0);
        add_action('the_post', [self::class, 'the_post'], 10, 1);
    }

    /** At template_redirect: the main query is known; tag the page and buffer it. */
    public static function start(): void
    {
        if (self::$active || !self::cacheable()) {
            return;
        }
        self::$active = true;
        foreach (self::page_tags() as $tag) {
            self::$tags[$tag] = true;
        }
        ob_start([self::class, 'finish']);
    }

    /** Each post the page lists (or shows) on its way through a loop. */
    public static function the_post(mixed $post): void
    {
        if (self::$active && is_object($post) && (int) ($post->ID ?? 0) > 0) {
            self::$tags[TENANTKIT_TAG_POST . (int) $post->ID] = true;
        }
    }

    /** The output handler: send the tags with the first output, once. */
    public static function finish(string $buffer, int $phase): string
    {
        if (self::$sent === null) {
            // Flushed before the end: later loops are unknown, say "anything may change it".
            $tags = ($phase & PHP_OUTPUT_HANDLER_FINAL) !== 0 ? array_keys(self::$tags)
                : [TENANTKIT_TAG_SITE];
            self::$sent = tenantkit_send_tags($tags) ?? [];
        }
        return $buffer;
    }

    private static function cacheable(): bool
    {
        $method = strtoupper((string) ($_SERVER['REQUEST_METHOD'] ?? 'GET'));
        return ($method === 'GET' || $method === 'HEAD')
            && !is_admin() && !wp_doing_ajax() && !(defined('REST_REQUEST') && REST_REQUEST)
            && !is_user_logged_in() && !is_preview() && !is_customize_preview()
            && !is_trackback() && !is_robots();
    }

    /** @return list<string> what the main query shows */
    private static function page_tags(): array
    {
        if ((string) get_query_var('sitemap') !== '') {
            return [TENANTKIT_TAG_HOME];
        }
        if (is_feed()) {
            if (is_singular()) {
                return [TENANTKIT_TAG_FEED, TENANTKIT_TAG_POST . (int) get_queried_object_id()];
            }
            return is_comment_feed() ? [TENANTKIT_TAG_FEED, TENANTKIT_TAG_HOME] : [TENANTKIT_TAG_FEED];
        }
        if (is_singular()) {
            $post = get_queried_object();
            if (!$post instanceof WP_Post) {
                return [TENANTKIT_TAG_HOME];
            }
            $tags = [TENANTKIT_TAG_POST . $post->ID];
            $taxonomies = get_object_taxonomies($post->post_type);
            if ($taxonomies !== []) {
                $ids = wp_get_object_terms($post->ID, $taxonomies, ['fields' => 'ids']);
                if (is_array($ids)) {
                    foreach ($ids as $id) {
                        $tags[] = TENANTKIT_TAG_TERM . (int) $id;
                    }
                }
            }
            if ((int) $post->post_author > 0) {
                $tags[] = TENANTKIT_TAG_AUTHOR . (int) $post->post_author;
            }
            if (is_front_page()) {
                $tags[] = TENANTKIT_TAG_HOME;
            }
            return $tags;
        }
        if (is_category() || is_tag() || is_tax()) {
            $term = get_queried_object();
            return $term instanceof WP_Term ? [TENANTKIT_TAG_TERM . $term->term_id]
                : [TENANTKIT_TAG_HOME];
        }
        if (is_author()) {
            $author = (int) get_queried_object_id();
            return $author > 0 ? [TENANTKIT_TAG_AUTHOR . $author] : [TENANTKIT_TAG_HOME];
        }
        // The front page, the blog page, date archives, post type archives, search, 404.
        return [TENANTKIT_TAG_HOME];
    }
}

Tenantkit_Tags::register();

}
