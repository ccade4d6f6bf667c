package nftables

import (
	"encoding/binary"
	"errors"
	"nodeagent/proxier/nft"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// errorAnswer is the kernel's NLMSG_ERROR answer to the message with sequence number seq: code
// is 0 (an acknowledgement) or a negative errno; msg, when set, is an extended-ack explanation.
func errorAnswer(seq uint32, code int32, msg string) []byte {
	flags := uint16(nlmFCapped)
	var tlv []byte
	if msg != "" {
		flags |= nlmFAckTLVs
		v := append([]byte(msg), 0)
		tlv = binary.NativeEndian.AppendUint16(tlv, uint16(nlaHdrLen+len(v)))
		tlv = binary.NativeEndian.AppendUint16(tlv, nlmsgerrAttrMsg)
		tlv = append(tlv, v...)
		for len(tlv)%4 != 0 {
			tlv = append(tlv, 0)
		}
	}
	payload := binary.NativeEndian.AppendUint32(nil, uint32(code))
	// The failing message's header, capped: length, type, flags, seq, port.
	payload = binary.NativeEndian.AppendUint32(payload, unix.SizeofNlMsghdr)
	payload = binary.NativeEndian.AppendUint16(payload, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWCHAIN)
	payload = binary.NativeEndian.AppendUint16(payload, unix.NLM_F_REQUEST)
	payload = binary.NativeEndian.AppendUint32(payload, seq)
	payload = binary.NativeEndian.AppendUint32(payload, 0)
	payload = append(payload, tlv...)
	out := binary.NativeEndian.AppendUint32(nil, uint32(unix.SizeofNlMsghdr+len(payload)))
	out = binary.NativeEndian.AppendUint16(out, unix.NLMSG_ERROR)
	out = binary.NativeEndian.AppendUint16(out, flags)
	out = binary.NativeEndian.AppendUint32(out, seq)
	out = binary.NativeEndian.AppendUint32(out, 1234)
	return append(out, payload...)
}

func testBatch(seq uint32) *batch {
	b := newBatch(seq)
	b.addTable(nft.IPv4)
	b.addChain(nft.IPv4, &nft.Chain{Name: "services"})
	b.delSet(nft.IPv4, "no-endpoints")
	b.bytes()
	return b
}

// Errors are attributed by sequence number: an answer left over from another batch is skipped
// (not blamed on this one), the failing message is named with the kernel's explanation, and the
// last message's acknowledgement ends the batch — also across the wrap of sequence numbers.
func TestBatchAnswers(t *testing.T) {
	for _, start := range []uint32{1000, 0xfffffffe} {
		b := testBatch(start)
		var datagram []byte
		datagram = append(datagram, errorAnswer(b.first-7, -int32(unix.EEXIST), "")...) // an earlier batch's
		datagram = append(datagram, errorAnswer(b.first+1, -int32(unix.ENOENT), "Table does not exist")...)
		var errs []error
		done, err := b.answers(datagram, &errs)
		if err != nil || done {
			t.Fatalf("start %d: first datagram: done %v err %v", start, done, err)
		}
		done, err = b.answers(errorAnswer(b.seq, 0, ""), &errs)
		if err != nil || !done {
			t.Fatalf("start %d: last acknowledgement: done %v err %v", start, done, err)
		}
		joined := errors.Join(errs...)
		if len(errs) != 1 || !errors.Is(joined, unix.ENOENT) || errors.Is(joined, unix.EEXIST) ||
			!strings.Contains(joined.Error(), "add chain services") || !strings.Contains(joined.Error(), "(Table does not exist)") {
			t.Errorf("start %d: errors %v, want only the chain's ENOENT with its explanation", start, joined)
		}
		if b.stale != 1 {
			t.Errorf("start %d: %d stale answers counted, want 1", start, b.stale)
		}
	}

	// An error about BATCH_BEGIN refuses the batch as a whole.
	b := testBatch(50)
	var errs []error
	done, err := b.answers(errorAnswer(b.first-1, -int32(unix.EPERM), ""), &errs)
	if err != nil || !done || len(errs) != 1 || !strings.Contains(errs[0].Error(), "batch: ") {
		t.Errorf("refused batch: done %v err %v errs %v", done, err, errs)
	}

	// Malformed answers are errors, never a panic or a wrong attribution.
	good := errorAnswer(b.seq, -int32(unix.EINVAL), "")
	for name, bad := range map[string][]byte{
		"short":            good[:10],
		"length too big":   append(binary.NativeEndian.AppendUint32(nil, 1000), good[4:]...),
		"length too small": append(binary.NativeEndian.AppendUint32(nil, 8), good[4:]...),
		"short error":      append(binary.NativeEndian.AppendUint32(nil, 20), good[4:20]...),
		"positive code":    errorAnswer(b.seq, 5, ""),
	} {
		var errs []error
		if _, err := b.answers(bad, &errs); err == nil {
			t.Errorf("%s: no error (errs %v)", name, errs)
		}
	}
}

// An error answer left unread by an earlier batch (its await gave up) is not blamed on the next
// batch: that one succeeds. Runs against the kernel in a network namespace of its own.
func TestStaleAnswerNotBlamed(t *testing.T) {
	ns := netns(t)
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := openSocket(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	// Deleting a table that does not exist fails; its answer is never read.
	s.seq += 2
	failing := newBatch(s.seq)
	failing.delTable(nft.IPv4)
	wire := failing.bytes()
	rc, err := s.conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), wire, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return true
	}); err != nil || serr != nil {
		t.Fatalf("send: %v %v", err, serr)
	}
	s.seq = failing.seq + 2
	ok := newBatch(s.seq)
	ok.addTable(nft.IPv4)
	if err := s.send(ok); err != nil {
		t.Errorf("a good batch after an unread failure: %v", err)
	}
}

// FuzzBatchAnswers feeds arbitrary datagrams to the answer parser: it never panics, attributes
// only errors it can name by this batch's sequence numbers, and keeps explanations bounded.
func FuzzBatchAnswers(f *testing.F) {
	b := testBatch(1000)
	f.Add(errorAnswer(b.seq, 0, ""))
	f.Add(append(errorAnswer(b.first-3, -int32(unix.EEXIST), ""), errorAnswer(b.first+1, -int32(unix.ENOENT), "Table does not exist")...))
	f.Add(errorAnswer(b.first-1, -int32(unix.EPERM), "x"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b := testBatch(1000)
		var errs []error
		_, _ = b.answers(data, &errs)
		for _, err := range errs {
			var errno unix.Errno
			if !errors.As(err, &errno) {
				t.Fatalf("error without an errno: %v", err)
			}
			if len(err.Error()) > 512 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
		}
	})
}
