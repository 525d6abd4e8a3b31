package hbone

import "sync"

// Receive buffers grow with the flow: a stream holds pooled chunks only while
// it has unread data, so an idle stream holds no buffer at all.
var chunkSizes = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

var chunkPools [len(chunkSizes)]sync.Pool

func getChunk(n int) *[]byte {
	for i, size := range chunkSizes {
		if n <= size {
			if b, ok := chunkPools[i].Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, size)
			return &b
		}
	}
	b := make([]byte, n) // larger than any frame we accept; not reached
	return &b
}

func putChunk(b *[]byte) {
	for i, size := range chunkSizes {
		if cap(*b) == size {
			chunkPools[i].Put(b)
			return
		}
	}
}

type chunk struct {
	b    *[]byte
	r, w int
}

// recvBuf is a FIFO of chunks. The read loop (the only producer) reserves
// space at the tail, fills it without holding the connection lock, and
// commits; readers consume from the head. All methods need conn.mu.
type recvBuf struct {
	chunks  []chunk
	head    int
	n       int  // unread bytes
	filling bool // the tail chunk is being filled outside the lock
	dead    bool // discarded: drop what is committed from now on
}

// reserve returns n bytes of space at the tail, to be filled and committed.
func (b *recvBuf) reserve(n int) []byte {
	if n == 0 {
		b.filling = true
		return nil
	}
	if len(b.chunks) > b.head {
		t := &b.chunks[len(b.chunks)-1]
		if len(*t.b)-t.w >= n {
			b.filling = true
			return (*t.b)[t.w : t.w+n]
		}
	}
	if b.head > 0 && b.head == len(b.chunks) {
		b.chunks, b.head = b.chunks[:0], 0
	} else if b.head > 16 && b.head*2 > len(b.chunks) {
		k := copy(b.chunks, b.chunks[b.head:])
		clear(b.chunks[k:])
		b.chunks, b.head = b.chunks[:k], 0
	}
	c := getChunk(max(n, chunkSizes[0]))
	b.chunks = append(b.chunks, chunk{b: c})
	b.filling = true
	return (*c)[:n]
}

// commit makes the n reserved bytes readable. It reports false if the buffer
// was discarded meanwhile (the bytes are then dropped).
func (b *recvBuf) commit(n int) bool {
	b.filling = false
	if b.dead {
		b.release()
		return false
	}
	if n > 0 {
		b.chunks[len(b.chunks)-1].w += n
		b.n += n
	}
	return true
}

// read copies unread bytes into p.
func (b *recvBuf) read(p []byte) int {
	total := 0
	for len(p) > 0 && b.head < len(b.chunks) {
		c := &b.chunks[b.head]
		n := copy(p, (*c.b)[c.r:c.w])
		c.r += n
		total += n
		p = p[n:]
		if c.r < c.w {
			break
		}
		if b.filling && b.head == len(b.chunks)-1 {
			break // the producer is writing into it
		}
		putChunk(c.b)
		b.chunks[b.head] = chunk{}
		b.head++
	}
	b.n -= total
	if b.head == len(b.chunks) {
		b.chunks, b.head = b.chunks[:0], 0
	}
	return total
}

// discard drops unread data and returns how many bytes were dropped.
func (b *recvBuf) discard() int {
	n := b.n
	b.n = 0
	b.dead = true
	if !b.filling {
		b.release()
	}
	return n
}

func (b *recvBuf) release() {
	for i := b.head; i < len(b.chunks); i++ {
		putChunk(b.chunks[i].b)
	}
	clear(b.chunks)
	b.chunks, b.head = nil, 0
}
