#!/bin/sh
# Seeds the fuzz corpora: parse_message with the RFC 4475 / RFC 5118 torture
# messages (and any regression inputs kept beside them); stream_framing with
# the same messages behind a mode byte and read sizes, two to a stream;
# ws_decode with masked text frames carrying them; pidf with the PIDF
# documents of tests/fixtures/pidf (pjsip, Linphone, Asterisk, Bria, the RFC
# examples) and a few edge forms (BOM, empty presence, prefixed root).
#   fuzz/seed.sh && cargo fuzz run parse_message -s none -- -max_total_time=600
# (stable works with -s none; on nightly drop it for AddressSanitizer)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus/parse_message"
mkdir -p "$corpus" "$here/corpus/stream_framing" "$here/corpus/ws_decode" "$here/corpus/pidf" "$here/corpus/feed_record" \
    "$here/corpus/uri" "$here/corpus/digest" "$here/corpus/users_file" "$here/corpus/config" "$here/corpus/proxy" "$here/corpus/frame"
# uri, digest, users_file, config: a few well-formed inputs to start from.
printf 'sip:Alice@Example.COM:5060;transport=tcp?subject=x' >"$here/corpus/uri/seed0"
printf 'sips:[2001:db8::1]:5061;lr' >"$here/corpus/uri/seed1"
printf 'Digest username="alice", realm="example.test", nonce="abc", uri="sip:example.test", response="0123456789abcdef0123456789abcdef", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="x"' >"$here/corpus/digest/seed0"
printf '[[user]]\nname = "alice"\ndomain = "example.test"\npassword = "secret"\n' >"$here/corpus/users_file/seed0"
printf 'listen = ["udp:127.0.0.1:5060"]\ndomain = ["example.test"]\n[[dispatcher]]\nname = "gw"\ndomains = ["pstn.example.test"]\ndestinations = ["sip:127.0.0.1:5081"]\n' >"$here/corpus/config/seed0"
# frame: an IPv4 and an IPv6 UDP frame (Ethernet, checksums right).
printf '\002\000\000\000\000\002\002\000\000\000\000\001\010\000\105\000\000\036\000\007\100\000\100\021\000\000\306\022\000\002\306\022\000\001\023\316\023\304\000\012\000\000hi' >"$here/corpus/frame/seed0"
cp "$here"/../tests/fixtures/torture/*.sip "$corpus"/
cp "$here"/../tests/fixtures/pidf/*.xml "$here/corpus/pidf"/
for t in parse_message stream_framing ws_decode pidf feed_record uri digest users_file config proxy frame; do
    if [ -d "$here/regressions/$t" ]; then
        cp "$here"/regressions/$t/* "$here/corpus/$t"/ 2>/dev/null || true
    fi
done
python3 - "$here" <<'PY'
import os, sys, glob, struct
here = sys.argv[1]
msgs = [open(f, 'rb').read() for f in sorted(glob.glob(os.path.join(here, '../tests/fixtures/torture/*.sip')))]
sf = os.path.join(here, 'corpus/stream_framing')
ws = os.path.join(here, 'corpus/ws_decode')
for i, m in enumerate(msgs):
    nxt = msgs[(i + 1) % len(msgs)]
    # mode 0 (default limits), read sizes 1..8 bytes of 7, 64, 200...
    open(os.path.join(sf, f'seed{i:03}'), 'wb').write(bytes([i % 8, 7, 64, 200, 3, 255, 1, 90, 31]) + m + b'\r\n\r\n' + nxt)
    body = m[:1024]
    key = bytes([0x11, 0x22, 0x33, 0x44])
    masked = bytes(b ^ key[j % 4] for j, b in enumerate(body))
    n = len(body)
    hdr = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack('>H', n)
    open(os.path.join(ws, f'seed{i:03}'), 'wb').write(bytes([len(hdr) + 3]) + hdr + key + masked)
pidf = os.path.join(here, 'corpus/pidf')
ns = b'xmlns="urn:ietf:params:xml:ns:pidf"'
for name, doc in [
    ('bom', b'\xef\xbb\xbf<presence ' + ns + b'><tuple id="a"><status><basic>open</basic></status></tuple></presence>'),
    ('empty', b'<presence ' + ns + b' entity="sip:a@example.test"/>'),
    ('prefixed', b'<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns="urn:x"><p:tuple id="t"><p:status><x/></p:status><p:note>&amp;&#x41;<![CDATA[<]]></p:note></p:tuple><e id="t"/></p:presence>'),
]:
    open(os.path.join(pidf, f'seed-{name}.xml'), 'wb').write(doc)
PY
echo "seeded: $(ls "$corpus" | wc -l) parse_message, $(ls "$here/corpus/stream_framing" | wc -l) stream_framing, $(ls "$here/corpus/ws_decode" | wc -l) ws_decode, $(ls "$here/corpus/pidf" | wc -l) pidf"
