// Package rpctest is a hostile gRPC peer for tests of the limits that hold
// before authentication: it speaks HTTP/2 frame by frame, so it can open
// more streams than a server allows, announce messages it never finishes
// and stall mid-request, which no well-behaved gRPC client does.
package rpctest

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// Stream is what became of one stream.
type Stream struct {
	ID      uint32
	Sent    int           // DATA bytes the server's flow control let through
	Refused bool          // RST_STREAM REFUSED_STREAM: over the server's stream cap
	Reset   http2.ErrCode // any other RST_STREAM code (when Ended without a status)
	Status  *codes.Code   // grpc-status of the trailers, when the server sent them
	Message string        // grpc-message
	Ended   bool          // the server closed or reset the stream
}

// Peer is one raw HTTP/2 connection to a gRPC server.
type Peer struct {
	conn   *tls.Conn
	framer *http2.Framer
	wmu    sync.Mutex // framer writes

	mu       sync.Mutex
	streams  []*stream
	byID     map[uint32]*stream
	connWin  int
	initWin  int
	settings chan struct{} // closed at the server's first SETTINGS
	gotSet   bool
	changed  chan struct{} // a window grew or a stream ended
	nextID   uint32
}

type stream struct {
	Stream
	win int
}

// Dial connects to addr over TLS (conf should carry no client
// certificate; ALPN h2 is added) and exchanges the HTTP/2 prefaces.
func Dial(addr string, conf *tls.Config) (*Peer, error) {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	p := &Peer{
		conn: conn, framer: http2.NewFramer(conn, conn),
		byID: map[uint32]*stream{}, connWin: 65535, initWin: 65535,
		settings: make(chan struct{}), changed: make(chan struct{}, 1), nextID: 1,
	}
	p.framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		conn.Close()
		return nil, err
	}
	if err := p.write(func(f *http2.Framer) error { return f.WriteSettings() }); err != nil {
		conn.Close()
		return nil, err
	}
	go p.read()
	select {
	case <-p.settings:
		return p, nil
	case <-time.After(10 * time.Second):
		conn.Close()
		return nil, errors.New("rpctest: no SETTINGS from the server within 10s")
	}
}

// Close closes the connection.
func (p *Peer) Close() error { return p.conn.Close() }

// Flood opens n streams to method at once, then sends on each a gRPC
// message header announcing a message of announce bytes and send bytes of
// it, never ending the stream, as fast as flow control allows. It returns
// the streams when each has sent its bytes or ended, or when the server
// has granted no window for stall (it is holding back, not buffering).
func (p *Peer) Flood(method string, n, announce, send int, stall time.Duration) ([]Stream, error) {
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "ferry"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			return nil, err
		}
	}
	var opened []*stream
	for range n {
		p.mu.Lock()
		s := &stream{Stream: Stream{ID: p.nextID}, win: p.initWin}
		p.nextID += 2
		p.streams = append(p.streams, s)
		p.byID[s.ID] = s
		p.mu.Unlock()
		opened = append(opened, s)
		if err := p.write(func(f *http2.Framer) error {
			return f.WriteHeaders(http2.HeadersFrameParam{StreamID: s.ID, BlockFragment: hdr.Bytes(), EndHeaders: true})
		}); err != nil {
			return nil, err
		}
	}
	msgHeader := make([]byte, 5)
	binary.BigEndian.PutUint32(msgHeader[1:], uint32(announce))
	zeros := make([]byte, 16<<10)
	total := len(msgHeader) + send
	for {
		progress, pending := false, false
		for _, s := range opened {
			p.mu.Lock()
			if s.Ended || s.Sent >= total {
				p.mu.Unlock()
				continue
			}
			pending = true
			chunk := min(len(zeros), total-s.Sent, p.connWin, s.win)
			off := s.Sent
			if off < len(msgHeader) { // the message header goes in frames of its own
				chunk = min(chunk, len(msgHeader)-off)
			}
			if chunk <= 0 {
				p.mu.Unlock()
				continue
			}
			p.connWin -= chunk
			s.win -= chunk
			s.Sent += chunk
			p.mu.Unlock()
			data := zeros[:chunk]
			if off < len(msgHeader) {
				data = msgHeader[off : off+chunk]
			}
			if err := p.write(func(f *http2.Framer) error { return f.WriteData(s.ID, false, data) }); err != nil {
				return p.snapshot(opened), err
			}
			progress = true
		}
		if !pending {
			return p.snapshot(opened), nil
		}
		if !progress {
			select {
			case <-p.changed:
			case <-time.After(stall):
				return p.snapshot(opened), nil
			}
		}
	}
}

// Streams returns every stream's state now.
func (p *Peer) Streams() []Stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Stream, len(p.streams))
	for i, s := range p.streams {
		out[i] = s.Stream
	}
	return out
}

// WaitEnded waits up to d for every stream to end and returns them.
func (p *Peer) WaitEnded(d time.Duration) []Stream {
	deadline := time.After(d)
	for {
		streams := p.Streams()
		ended := true
		for _, s := range streams {
			ended = ended && s.Ended
		}
		if ended {
			return streams
		}
		select {
		case <-p.changed:
		case <-deadline:
			return streams
		}
	}
}

func (p *Peer) snapshot(ss []*stream) []Stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Stream, len(ss))
	for i, s := range ss {
		out[i] = s.Stream
	}
	return out
}

func (p *Peer) write(fn func(*http2.Framer) error) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return fn(p.framer)
}

func (p *Peer) signal() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// read handles the server's frames until the connection ends: it answers
// SETTINGS and PINGs (so keepalive finds a live peer), and records window
// updates, resets and trailers.
func (p *Peer) read() {
	for {
		fr, err := p.framer.ReadFrame()
		if err != nil { // the connection ended: so did every stream
			p.mu.Lock()
			for _, s := range p.streams {
				s.Ended = true
			}
			if !p.gotSet {
				p.gotSet = true
				close(p.settings)
			}
			p.mu.Unlock()
			p.signal()
			return
		}
		switch f := fr.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			p.mu.Lock()
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				for _, s := range p.streams {
					s.win += int(v) - p.initWin
				}
				p.initWin = int(v)
			}
			if !p.gotSet {
				p.gotSet = true
				close(p.settings)
			}
			p.mu.Unlock()
			_ = p.write(func(w *http2.Framer) error { return w.WriteSettingsAck() })
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = p.write(func(w *http2.Framer) error { return w.WritePing(true, f.Data) })
			}
		case *http2.WindowUpdateFrame:
			p.mu.Lock()
			if f.StreamID == 0 {
				p.connWin += int(f.Increment)
			} else if s := p.byID[f.StreamID]; s != nil {
				s.win += int(f.Increment)
			}
			p.mu.Unlock()
		case *http2.RSTStreamFrame:
			p.mu.Lock()
			if s := p.byID[f.StreamID]; s != nil {
				s.Ended = true
				if f.ErrCode == http2.ErrCodeRefusedStream {
					s.Refused = true
				} else {
					s.Reset = f.ErrCode
				}
			}
			p.mu.Unlock()
		case *http2.MetaHeadersFrame:
			p.mu.Lock()
			if s := p.byID[f.StreamID]; s != nil {
				if v := f.PseudoValue("status"); v != "" && v != "200" {
					s.Message = "HTTP status " + v
				}
				for _, hf := range f.RegularFields() {
					switch hf.Name {
					case "grpc-status":
						if c, err := strconv.Atoi(hf.Value); err == nil {
							code := codes.Code(c)
							s.Status = &code
						}
					case "grpc-message":
						s.Message = decodeMessage(hf.Value)
					}
				}
				if f.StreamEnded() {
					s.Ended = true
				}
			}
			p.mu.Unlock()
		case *http2.DataFrame:
			if f.StreamEnded() {
				p.mu.Lock()
				if s := p.byID[f.StreamID]; s != nil {
					s.Ended = true
				}
				p.mu.Unlock()
			}
		}
		p.signal()
	}
}

// decodeMessage undoes grpc-message's percent-encoding.
func decodeMessage(v string) string {
	var b []byte
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if n, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(n))
				i += 2
				continue
			}
		}
		b = append(b, v[i])
	}
	return string(b)
}

// Outcome sums up the streams of a flood.
type Outcome struct {
	Refused   int      // reset with REFUSED_STREAM: over the server's stream cap
	Exhausted int      // answered ResourceExhausted: over its message size
	Sent      int      // DATA bytes the server let through, in all
	Other     []Stream // ended any other way, or still open
}

// Summarize sorts streams by how the server ended them. A server that
// holds its limits leaves Other empty.
func Summarize(streams []Stream) Outcome {
	var o Outcome
	for _, s := range streams {
		o.Sent += s.Sent
		switch {
		case s.Refused:
			o.Refused++
		case s.Status != nil && *s.Status == codes.ResourceExhausted:
			o.Exhausted++
		default:
			o.Other = append(o.Other, s)
		}
	}
	return o
}

// String sums a stream up for test logs.
func (s Stream) String() string {
	switch {
	case s.Refused:
		return fmt.Sprintf("stream %d: refused", s.ID)
	case s.Status != nil:
		return fmt.Sprintf("stream %d: sent %d, status %s: %s", s.ID, s.Sent, *s.Status, s.Message)
	case s.Ended:
		return fmt.Sprintf("stream %d: sent %d, reset %s", s.ID, s.Sent, s.Reset)
	}
	return fmt.Sprintf("stream %d: sent %d, open", s.ID, s.Sent)
}
