"""Amazon's side of AMC for rule-based audiences: deterministic synthetic `*_for_audiences` tables.

The tables and columns are the ones Amazon's guide documents for rule-based audience queries
(`audiences/rule-based-audiences.md` lists the tables, `datasources/*.md` their columns); each has a
subset of its documented columns, `user_id` and `user_id_type` always.

Synthetic user `i` is the Amazon user behind the hashed email `user{i}@example.com`, with the same
pseudo user id an upload derives from that hash, so uploaded datasets join with these tables.
Impressions and sponsored ads traffic cover all 5,000 users, attributed events the even ones (2,500),
conversions 1,500.
"""

import duckdb

SYNTHETIC_USERS = 5000

_USER = "substr(sha256(sha256('user' || i || '@example.com')), 1, 16) AS user_id, 'adUserId' AS user_id_type"
_ATTRIBUTED_EVENTS = f"""
        SELECT {_USER},
               TIMESTAMP '2025-01-01' + to_days(CAST(i % 90 AS INTEGER)) AS conversion_event_dt,
               ['order', 'shoppingCart', 'detailPageView'][1 + i % 3] AS conversion_event_subtype,
               'B0' || lpad(CAST(i % 50 AS VARCHAR), 8, '0') AS tracked_asin,
               1000 + i % 5 AS campaign_id,
               1 + i % 3 AS purchases,
               round(9.99 * (1 + i % 3), 2) AS product_sales
        FROM (SELECT range AS i FROM range({SYNTHETIC_USERS})) WHERE i % 2 = 0"""
_VIEWS = {
    "dsp_impressions_for_audiences": f"""
        SELECT {_USER},
               TIMESTAMP '2025-01-01' + to_days(CAST(n % 90 AS INTEGER)) + to_hours(n % 24) AS impression_dt,
               1000 + i % 5 AS campaign_id,
               42 AS advertiser_id,
               ['PC', 'Phone', 'TV', 'Tablet'][1 + i % 4] AS device_type,
               1 AS impressions
        FROM (SELECT range AS n, range % {SYNTHETIC_USERS} AS i FROM range({2 * SYNTHETIC_USERS}))""",
    # The two differ in which events a query's time window selects; the rows are the same here.
    "amazon_attributed_events_by_conversion_time_for_audiences": _ATTRIBUTED_EVENTS,
    "amazon_attributed_events_by_traffic_time_for_audiences": _ATTRIBUTED_EVENTS,
    "conversions_for_audiences": f"""
        SELECT {_USER},
               TIMESTAMP '2025-01-01' + to_days(CAST(i % 90 AS INTEGER)) AS event_dt_utc,
               ['shoppingCart', 'detailPageView', 'order'][1 + i % 3] AS event_subtype,
               ['add_to_cart', 'sign_up', 'purchase'][1 + i % 3] AS conversion_event_name,
               1 AS conversions
        FROM (SELECT range AS i FROM range({SYNTHETIC_USERS})) WHERE i % 10 < 3""",
    "sponsored_ads_traffic_for_audiences": f"""
        SELECT {_USER},
               ['chai tea', 'green tea', 'coffee beans', 'masala chai'][1 + i % 4] AS customer_search_term,
               2000 + i % 3 AS campaign_id,
               1 AS impressions,
               CAST(i % 5 = 0 AS INTEGER) AS clicks
        FROM (SELECT range AS i FROM range({SYNTHETIC_USERS}))""",
}


def create_synthetic_views(cursor: duckdb.DuckDBPyConnection) -> None:
    """Define the `*_for_audiences` tables as temporary views on this cursor."""
    for name, query in _VIEWS.items():
        cursor.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {query}")
