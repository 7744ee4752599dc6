"""Many concurrent HTTP/2 streams on one connection through cork, with httpx (http2=True).

Usage: h2_streams.py PROXY CA URL COUNT [CANARY_INDEX CANARY]
Stream i POSTs `stream i` to URL; stream CANARY_INDEX (if given) carries CANARY in its body.
Prints one JSON object: the results per stream and how many connections httpx opened."""
import asyncio
import json
import sys

import httpx

proxy, ca, url, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
canary_index = int(sys.argv[5]) if len(sys.argv) > 5 else -1
canary = sys.argv[6] if len(sys.argv) > 6 else ""

connections = set()


async def main():
    async with httpx.AsyncClient(http2=True, proxy=proxy, verify=ca, timeout=60) as client:
        # One request first, so every later stream shares its connection.
        first = await client.get(url)
        assert first.http_version == "HTTP/2", first.http_version

        async def one(i):
            body = f"stream {i} " + (canary if i == canary_index else "plain")
            r = await client.post(url, content=body.encode(), headers={"content-type": "text/plain"})
            stream = r.extensions.get("network_stream")
            if stream is not None:
                connections.add(id(stream))
            return {"i": i, "status": r.status_code, "http_version": r.http_version, "body": r.json()}

        results = await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"results": results, "connections": len(connections)}))


asyncio.run(main())
