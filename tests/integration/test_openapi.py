"""The OpenAPI document describes every answer: a client generated from /openapi.json knows the shape of each
route's success, and list pages keep the shape the openai SDK reads."""

import httpx
import openai

from tests.helpers.datasets import chat_jsonl

JSON = "application/json"


def _described(schema: dict, components: dict) -> bool:
    """A named model with declared fields; a bare `dict` answer is an object schema without them."""
    name = schema.get("$ref", "").removeprefix("#/components/schemas/")
    return bool(name) and bool(components[name].get("properties"))


def test_every_route_describes_its_success_answer(api_base_url: str) -> None:
    document = httpx.get(f"{api_base_url}/openapi.json").json()
    components = document["components"]["schemas"]
    undescribed = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            successes = [answer for code, answer in operation["responses"].items() if code.startswith("2")]
            contents = [content for answer in successes for content in answer.get("content", {}).items()]
            # JSON answers name their model; others (a file's bytes) at least their type.
            if not contents or not all(
                _described(content["schema"], components) if media == JSON else content.get("schema")
                for media, content in contents
            ):
                undescribed.append(f"{method.upper()} {path}")
    assert undescribed == []
    assert not [path for path in document["paths"] if not path.startswith(("/v1/", "/healthz", "/readyz"))]


def test_a_list_page_names_its_first_and_last_ids(http: httpx.Client, client: openai.OpenAI) -> None:
    assert http.get("/v1/files").json() == {
        "object": "list",
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }
    ids = [client.files.create(file=(f"f{i}.jsonl", chat_jsonl()), purpose="fine-tune").id for i in range(3)]

    page = http.get("/v1/files", params={"limit": 2}).json()

    assert list(page) == ["object", "data", "has_more", "first_id", "last_id"]
    assert [item["id"] for item in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True and (page["first_id"], page["last_id"]) == (ids[2], ids[1])
    assert page["data"][0] == http.get(f"/v1/files/{ids[2]}").json()
