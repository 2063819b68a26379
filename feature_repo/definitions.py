"""Feast definitions: what the recommender knows about users and items, and where it comes from.

The parquet sources under data/ are written by `recsys build` (serve_app/offline/feature_tables.py);
each row is a feature value as of its `event_timestamp`, so `get_historical_features` is point-in-time
correct for training and `feast materialize-incremental` loads the newest values into the online store.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

user = Entity(
    name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A person we recommend to"
)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A catalogue item")

user_source = FileSource(
    name="user_features_source",
    path="data/user_features.parquet",
    timestamp_field="event_timestamp",
)
item_source = FileSource(
    name="item_features_source",
    path="data/item_features.parquet",
    timestamp_field="event_timestamp",
)

# Fresh user features (a new embedding after a session, with its model id; updated counts) are pushed
# here in real time by POST /events (serve_app/events/ingest.py):
#   store.push("user_push", df, to=PushMode.ONLINE_AND_OFFLINE)
user_push = PushSource(name="user_push", batch_source=user_source)

# ttl=0: a value stays valid until a newer one replaces it (users can be idle for months).
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="user_embedding", dtype=Array(Float32), description="Implicit-ALS user factors"),
        Field(
            name="user_embedding_model",
            dtype=String,
            description="Id of the ALS model user_embedding belongs to; retrieval pairs it only with the "
            "item vectors of that model (a bundle's manifest names its model)",
        ),
        Field(name="user_n_interactions", dtype=Int64),
        Field(name="user_days_since_last", dtype=Float32),
        Field(name="user_avg_rating", dtype=Float32),
        Field(name="user_n_recent", dtype=Int64, description="Interactions in the last 30 days"),
        Field(
            name="user_category_share",
            dtype=Array(Float32),
            description="Share of the user's interactions in each item category (indexed by item_category)",
        ),
        Field(
            name="user_recent_items",
            dtype=Array(Int64),
            description="Items of the user's events since the bundle was built, newest last (the seen "
            "filter adds them to the bundle's history); empty in the rows a build writes",
        ),
    ],
    online=True,
    source=user_push,
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_popularity", dtype=Int64),
        Field(name="item_popularity_recent", dtype=Int64, description="Interactions in the last 30 days"),
        Field(name="item_popularity_year", dtype=Int64, description="Interactions in the last 365 days"),
        Field(name="item_age_days", dtype=Float32, description="Days since the first interaction"),
        Field(name="item_days_since_last", dtype=Float32),
        Field(name="item_avg_rating", dtype=Float32),
        Field(name="item_category", dtype=Int64, description="Code of the first genre, -1 when none"),
    ],
    # Offline only: training reads it point-in-time; serving holds the bundle's snapshot in memory
    # (design section 2), so materializing a row per item into the online store would be pure cost.
    online=False,
    source=item_source,
)

# Exactly what the ranker consumes, in the order serve_app/core/features.py expects (checked at build time).
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[
        user_features[
            [
                "user_n_interactions",
                "user_days_since_last",
                "user_avg_rating",
                "user_n_recent",
                "user_category_share",
            ]
        ],
        item_features,
    ],
)

# What the request path reads per user (serve_app/stages/user_features.feast_fetcher): the embedding
# for retrieval plus the ranker's user features.
user_online_v1 = FeatureService(name="user_online_v1", features=[user_features])
