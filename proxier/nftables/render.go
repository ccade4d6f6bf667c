package nftables

import (
	"bufio"
	"io"
	"nodeagent/proxier/nft"
	"slices"
	"strconv"
	"strings"

	"nodeagent/proxier"
)

// desired is a family's whole table: the base fragment, then one per service port in state
// order.
type desired struct {
	f      *nft.Family
	frags  []*fragment
	owners []proxier.ServicePortName // owners[i] built frags[i+1]
}

func buildTable(st *proxier.State, f *nft.Family) *desired {
	d := &desired{f: f, frags: []*fragment{nil}}
	var counts []int
	for _, sp := range st.Services {
		if sp.Name.Family != f.PF {
			continue
		}
		fr := buildService(st, f, sp, nil)
		counts = mergeCounts(counts, fr.counts)
		d.frags = append(d.frags, fr)
		d.owners = append(d.owners, sp.Name)
	}
	d.frags[0] = buildBase(st, f, counts)
	return d
}

// mergeCounts returns the sorted union of counts (sorted) and more.
func mergeCounts(counts, more []int) []int {
	for _, n := range more {
		if i, found := slices.BinarySearch(counts, n); !found {
			counts = slices.Insert(counts, i, n)
		}
	}
	return counts
}

// writeText writes the table in nft -f syntax. The preamble makes the file self-contained and
// atomic: whatever table of that name exists is replaced as a whole.
func (d *desired) writeText(w *bufio.Writer) {
	f := d.f
	w.WriteString("add table " + f.Name + " " + tableName + "\n")
	w.WriteString("delete table " + f.Name + " " + tableName + "\n")
	w.WriteString("table " + f.Name + " " + tableName + " {\n")

	var sets []*nft.Set
	elems := map[string][]element{}
	for _, fr := range d.frags {
		sets = append(sets, fr.sets...)
		for _, e := range fr.elems {
			elems[e.set] = append(elems[e.set], e)
		}
	}
	var b []byte
	for _, s := range sets {
		kw := "set"
		if s.IsMap || s.Endpoints {
			kw = "map"
		}
		w.WriteString("\t" + kw + " " + s.Name + " {\n\t\t" + s.TypeText(f) + "\n")
		if s.Timeout > 0 {
			w.WriteString("\t\tflags dynamic,timeout\n\t\ttimeout " + strconv.FormatInt(int64(s.Timeout.Seconds()), 10) + "s\n")
		}
		if s.Comment != "" {
			w.WriteString("\t\tcomment " + strconv.Quote(s.Comment) + "\n")
		}
		if es := elems[s.Name]; len(es) > 0 {
			// Deduplicate shared keys (a cluster IP serves several ports) and sort for stable output.
			lines := make([]string, 0, len(es))
			for _, e := range es {
				b = nft.AppendKey(b[:0], s.Kind, e.key)
				if s.IsMap {
					b = append(b, " : "...)
					b = e.val.AppendText(b, f)
				}
				if s.Endpoints {
					b = append(b, " : "...)
					b = nft.AppendEndpoint(b, e.to)
				}
				lines = append(lines, string(b))
			}
			slices.Sort(lines)
			lines = slices.Compact(lines)
			w.WriteString("\t\telements = {\n\t\t\t" + strings.Join(lines, ",\n\t\t\t") + "\n\t\t}\n")
		}
		w.WriteString("\t}\n")
	}
	for _, fr := range d.frags {
		for _, c := range fr.chains {
			b = c.AppendText(b[:0], f)
			w.Write(b)
		}
	}
	w.WriteString("}\n")
}

// renderText renders st for the given families.
func renderText(w io.Writer, st *proxier.State, fams []*nft.Family) error {
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		buildTable(st, f).writeText(bw)
	}
	return bw.Flush()
}
