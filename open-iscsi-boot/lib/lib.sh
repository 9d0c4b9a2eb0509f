# shellcheck shell=sh
# The OIB_* results set here are read by the scripts that source this file:
# shellcheck disable=SC2034
#
# open-iscsi-boot: functions shared by the initramfs scripts, the handover
# service and iscsi-boot-status.
#
# Constraints, and why:
# - POSIX sh only.  In the initramfs this runs under busybox sh or, when
#   busybox is not installed, under klibc's sh; on the booted system and in
#   the unit tests under dash.
# - Shell builtins only (plus readlink, which klibc-utils also provides).  An
#   initramfs without busybox has no sed, grep, cut, tr or awk.
# - No "local": it is not POSIX.  Functions that only answer yes/no or print
#   a result run in a subshell "( ... )" so that their variables, IFS and
#   "set -f" cannot leak; functions that set results use OIB_* globals and
#   prefix their scratch variables with _oib_.
# - Every input comes from an argument or from one of the variables below, so
#   the tests can point them at fake files.

: "${OIB_CMDLINE:=/proc/cmdline}"	# kernel command line
: "${OIB_SYSFS:=/sys}"			# sysfs root
: "${OIB_PROC:=/proc}"			# procfs root
: "${OIB_NET_CONF_DIR:=/run}"		# where ipconfig writes net-<dev>.conf
: "${OIB_CHAP_FILE:=/etc/open-iscsi-boot/chap}"	# per-machine initrd

OIB_DEFAULT_PORT=3260

# ---------------------------------------------------------------------------
# Kernel command line
# ---------------------------------------------------------------------------

# oib_cmdline_get NAME: print the value of the last NAME=value word of the
# kernel command line (the kernel's own rule: the last one wins).  Returns 1
# when NAME= does not occur.
oib_cmdline_get() (
	[ -r "$OIB_CMDLINE" ] || exit 1
	line=
	read -r line <"$OIB_CMDLINE" || [ -n "$line" ] || exit 1
	found=1
	value=
	set -f	# a value may contain glob characters ([2001:db8::1])
	for word in $line; do
		case "$word" in
		"$1"=*)
			value=${word#*=}
			found=0
			;;
		esac
	done
	[ "$found" -eq 0 ] || exit 1
	printf '%s\n' "$value"
)

# oib_cmdline_all NAME: print the value of every NAME=value word, one per
# line, in command-line order (used for ip=, which may be given per device).
oib_cmdline_all() (
	[ -r "$OIB_CMDLINE" ] || exit 0
	line=
	read -r line <"$OIB_CMDLINE" || [ -n "$line" ] || exit 0
	set -f
	for word in $line; do
		case "$word" in
		"$1"=*) printf '%s\n' "${word#*=}" ;;
		esac
	done
)

# oib_cmdline_has NAME: true when NAME or NAME=... is on the command line.
oib_cmdline_has() (
	[ -r "$OIB_CMDLINE" ] || exit 1
	line=
	read -r line <"$OIB_CMDLINE" || [ -n "$line" ] || exit 1
	set -f
	for word in $line; do
		case "$word" in
		"$1" | "$1"=*) exit 0 ;;
		esac
	done
	exit 1
)

# ---------------------------------------------------------------------------
# Validation of names, addresses and ports
# ---------------------------------------------------------------------------

# oib_valid_iscsi_name NAME: an iSCSI qualified name
#   iqn.YYYY-MM.reverse.domain[:identifier]
# or an EUI-64 name: eui. followed by 16 hex digits (RFC 3720, 3.2.6.3).
# The identifier may hold letters, digits and . - : _ only: the name becomes
# a directory name in /etc/iscsi/nodes and is written into shell-readable
# files, so "/", quotes, blanks and commas (our list separator) are refused.
oib_valid_iscsi_name() (
	name=$1
	[ -n "$name" ] && [ "${#name}" -le 223 ] || exit 1
	case "$name" in
	eui.*)
		hex=${name#eui.}
		[ "${#hex}" -eq 16 ] || exit 1
		case "$hex" in *[!0-9A-Fa-f]*) exit 1 ;; esac
		exit 0
		;;
	iqn.*) ;;
	*) exit 1 ;;
	esac
	rest=${name#iqn.}
	# date of the naming authority: YYYY-MM, month 01..12
	date=${rest%%.*}
	case "$date" in
	[0-9][0-9][0-9][0-9]-0[1-9] | [0-9][0-9][0-9][0-9]-1[0-2]) ;;
	*) exit 1 ;;
	esac
	case "$rest" in *.*) ;; *) exit 1 ;; esac
	rest=${rest#*.}
	domain=${rest%%:*}
	# reversed domain name: non-empty labels of letters, digits and "-"
	case "$domain" in
	"" | .* | *. | *..* | *[!A-Za-z0-9.-]*) exit 1 ;;
	esac
	case "$rest" in
	*:*)
		ident=${rest#*:}
		case "$ident" in
		"" | *[!A-Za-z0-9.:_-]*) exit 1 ;;
		esac
		;;
	esac
	exit 0
)

# oib_valid_ipv4 ADDR: dotted quad, each octet 0..255 in plain decimal
# (a leading zero is refused: some tools read it as octal).
oib_valid_ipv4() (
	case "$1" in
	"" | *[!0-9.]* | .* | *. | *..*) exit 1 ;;
	esac
	IFS=.
	set -f
	# shellcheck disable=SC2086 # splitting on "." is the point
	set -- $1
	[ "$#" -eq 4 ] || exit 1
	for octet in "$@"; do
		case "$octet" in
		0) ;;
		0* | ????*) exit 1 ;;
		esac
		[ "$octet" -le 255 ] || exit 1
	done
	exit 0
)

# _oib_v6_groups PART LAST: count the colon-separated hex groups of PART (a
# piece of an IPv6 address without "::").  An IPv4 tail (counted as two
# groups) is allowed only when LAST=1, i.e. at the very end of the address.
# Prints the count; returns 1 on a malformed piece.
_oib_v6_groups() (
	part=$1
	count=0
	[ -n "$part" ] || { echo 0; exit 0; }
	while :; do
		group=${part%%:*}
		case "$part" in
		*:*) part=${part#*:} ;;
		*) part= ;;
		esac
		case "$group" in
		"") exit 1 ;;
		*.*)
			# dotted IPv4 tail, e.g. ::ffff:192.0.2.1
			[ "$2" = 1 ] && [ -z "$part" ] || exit 1
			oib_valid_ipv4 "$group" || exit 1
			count=$((count + 2))
			break
			;;
		?????* | *[!0-9A-Fa-f]*) exit 1 ;;
		*) count=$((count + 1)) ;;
		esac
		[ -n "$part" ] || break
	done
	echo "$count"
)

# oib_valid_ipv6 ADDR: an IPv6 address (without brackets and without a zone
# index: a link-local portal would need one and is not supported).
oib_valid_ipv6() (
	addr=$1
	case "$addr" in
	"" | *[!0-9A-Fa-f:.]*) exit 1 ;;
	*:*) ;;
	*) exit 1 ;;
	esac
	case "$addr" in
	*::*::* | *:::*) exit 1 ;;
	*::*)
		head=${addr%%::*}
		tail=${addr#*::}
		n_head=$(_oib_v6_groups "$head" 0) || exit 1
		n_tail=$(_oib_v6_groups "$tail" 1) || exit 1
		[ $((n_head + n_tail)) -le 7 ] || exit 1
		;;
	*)
		n=$(_oib_v6_groups "$addr" 1) || exit 1
		[ "$n" -eq 8 ] || exit 1
		;;
	esac
	exit 0
)

# oib_valid_port PORT: decimal 1..65535 without leading zeros.
oib_valid_port() (
	case "$1" in
	"" | 0* | *[!0-9]* | ??????*) exit 1 ;;
	esac
	[ "$1" -le 65535 ]
)

# oib_lowercase STRING: print STRING with A-Z mapped to a-z (no tr in klibc).
oib_lowercase() (
	in=$1
	out=
	while [ -n "$in" ]; do
		rest=${in#?}
		c=${in%"$rest"}
		in=$rest
		case "$c" in
		A) c=a ;; B) c=b ;; C) c=c ;; D) c=d ;; E) c=e ;; F) c=f ;;
		G) c=g ;; H) c=h ;; I) c=i ;; J) c=j ;; K) c=k ;; L) c=l ;;
		M) c=m ;; N) c=n ;; O) c=o ;; P) c=p ;; Q) c=q ;; R) c=r ;;
		S) c=s ;; T) c=t ;; U) c=u ;; V) c=v ;; W) c=w ;; X) c=x ;;
		Y) c=y ;; Z) c=z ;;
		esac
		out=$out$c
	done
	printf '%s\n' "$out"
)

# oib_format_portal ADDR PORT: the portal as iscsiadm -p takes it and as we
# print it: a.b.c.d:port or [v6]:port.
oib_format_portal() {
	case "$1" in
	*:*) printf '[%s]:%s\n' "$1" "$2" ;;
	*) printf '%s:%s\n' "$1" "$2" ;;
	esac
}

# oib_parse_portal STRING: parse one portal of iscsitarget=:
#   a.b.c.d[:port] or [ipv6][:port]   (default port 3260)
# Sets OIB_PORTAL (normalised, see oib_format_portal), OIB_PORTAL_ADDR (no
# brackets; IPv6 in lower case so that it compares with what sysfs shows)
# and OIB_PORTAL_PORT.  On error returns 1 with OIB_ERROR set.
oib_parse_portal() {
	OIB_PORTAL=
	OIB_PORTAL_ADDR=
	OIB_PORTAL_PORT=
	OIB_ERROR=
	_oib_pp_str=$1
	case "$_oib_pp_str" in
	"")
		OIB_ERROR="empty portal"
		return 1
		;;
	\[*)
		_oib_pp_inner=${_oib_pp_str#\[}
		case "$_oib_pp_inner" in
		*\]*) ;;
		*)
			OIB_ERROR="portal '$_oib_pp_str': missing ']' after the IPv6 address"
			return 1
			;;
		esac
		_oib_pp_addr=${_oib_pp_inner%%\]*}
		_oib_pp_rest=${_oib_pp_inner#*\]}
		case "$_oib_pp_rest" in
		"") _oib_pp_port=$OIB_DEFAULT_PORT ;;
		:*) _oib_pp_port=${_oib_pp_rest#:} ;;
		*)
			OIB_ERROR="portal '$_oib_pp_str': unexpected '$_oib_pp_rest' after ']'"
			return 1
			;;
		esac
		if ! oib_valid_ipv6 "$_oib_pp_addr"; then
			OIB_ERROR="portal '$_oib_pp_str': '$_oib_pp_addr' is not a valid IPv6 address"
			return 1
		fi
		_oib_pp_addr=$(oib_lowercase "$_oib_pp_addr")
		;;
	*:*:*)
		OIB_ERROR="portal '$_oib_pp_str': an IPv6 address must be written in brackets, e.g. [2001:db8::1]:3260"
		return 1
		;;
	*:*)
		_oib_pp_addr=${_oib_pp_str%:*}
		_oib_pp_port=${_oib_pp_str##*:}
		;;
	*)
		_oib_pp_addr=$_oib_pp_str
		_oib_pp_port=$OIB_DEFAULT_PORT
		;;
	esac
	case "$_oib_pp_str" in
	\[*) ;;
	*)
		if ! oib_valid_ipv4 "$_oib_pp_addr"; then
			OIB_ERROR="portal '$_oib_pp_str': '$_oib_pp_addr' is not a valid IPv4 address (four numbers 0..255, host names are not supported)"
			return 1
		fi
		;;
	esac
	if ! oib_valid_port "$_oib_pp_port"; then
		OIB_ERROR="portal '$_oib_pp_str': '$_oib_pp_port' is not a valid port (1..65535)"
		return 1
	fi
	OIB_PORTAL_ADDR=$_oib_pp_addr
	OIB_PORTAL_PORT=$_oib_pp_port
	OIB_PORTAL=$(oib_format_portal "$_oib_pp_addr" "$_oib_pp_port")
	return 0
}

# oib_portal_split PORTAL: the inverse of oib_format_portal; sets
# OIB_PORTAL_ADDR (without brackets) and OIB_PORTAL_PORT.
oib_portal_split() {
	OIB_PORTAL_PORT=${1##*:}
	OIB_PORTAL_ADDR=${1%:*}
	OIB_PORTAL_ADDR=${OIB_PORTAL_ADDR#\[}
	OIB_PORTAL_ADDR=${OIB_PORTAL_ADDR%\]}
}

OIB_ISCSITARGET_SYNTAX='iscsitarget=<target IQN>,<portal>[,<portal>...] with portal a.b.c.d[:port] or [IPv6][:port]'

# oib_parse_iscsitarget VALUE: parse the value of iscsitarget=.
# Sets OIB_TARGET and OIB_PORTALS (normalised portals separated by single
# spaces, in the given order).  On error returns 1 with OIB_ERROR set to a
# message that names the offending part.
oib_parse_iscsitarget() {
	OIB_TARGET=
	OIB_PORTALS=
	OIB_ERROR=
	_oib_it_value=$1
	if [ -z "$_oib_it_value" ]; then
		OIB_ERROR="iscsitarget= is empty; expected $OIB_ISCSITARGET_SYNTAX"
		return 1
	fi
	_oib_it_name=${_oib_it_value%%,*}
	if ! oib_valid_iscsi_name "$_oib_it_name"; then
		OIB_ERROR="iscsitarget=: '$_oib_it_name' is not a valid iSCSI target name (expected iqn.YYYY-MM.reverse.domain[:identifier] or eui. and 16 hex digits)"
		return 1
	fi
	case "$_oib_it_value" in
	*,*) _oib_it_rest=${_oib_it_value#*,} ;;
	*) _oib_it_rest= ;;
	esac
	if [ -z "$_oib_it_rest" ]; then
		OIB_ERROR="iscsitarget=: no portal after the target name; expected $OIB_ISCSITARGET_SYNTAX"
		return 1
	fi
	_oib_it_portals=
	while :; do
		_oib_it_item=${_oib_it_rest%%,*}
		if [ -z "$_oib_it_item" ]; then
			OIB_ERROR="iscsitarget=: empty portal in the list (two commas in a row or a trailing comma)"
			return 1
		fi
		if ! oib_parse_portal "$_oib_it_item"; then
			OIB_ERROR="iscsitarget=: $OIB_ERROR"
			return 1
		fi
		case " $_oib_it_portals " in
		*" $OIB_PORTAL "*)
			OIB_ERROR="iscsitarget=: portal $OIB_PORTAL is given twice"
			return 1
			;;
		esac
		_oib_it_portals="${_oib_it_portals:+$_oib_it_portals }$OIB_PORTAL"
		case "$_oib_it_rest" in
		*,*) _oib_it_rest=${_oib_it_rest#*,} ;;
		*) break ;;
		esac
	done
	OIB_TARGET=$_oib_it_name
	OIB_PORTALS=$_oib_it_portals
	return 0
}

# oib_parse_initiator VALUE: validate the value of iscsi_initiator=.
# Sets OIB_INITIATOR, or returns 1 with OIB_ERROR set.
oib_parse_initiator() {
	OIB_INITIATOR=
	OIB_ERROR=
	if [ -z "$1" ]; then
		OIB_ERROR="iscsi_initiator= is empty; expected the initiator name, e.g. iscsi_initiator=iqn.2024-01.org.example:host-52-54-00-12-34-56"
		return 1
	fi
	if ! oib_valid_iscsi_name "$1"; then
		OIB_ERROR="iscsi_initiator=: '$1' is not a valid iSCSI name (expected iqn.YYYY-MM.reverse.domain[:identifier] or eui. and 16 hex digits)"
		return 1
	fi
	OIB_INITIATOR=$1
	return 0
}

# oib_initiator_from_file FILE: print the InitiatorName= of an
# initiatorname.iscsi file; returns 1 when there is none.
oib_initiator_from_file() (
	[ -r "$1" ] || exit 1
	name=
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in
		InitiatorName=*) name=${line#InitiatorName=} ;;
		esac
	done <"$1"
	[ -n "$name" ] || exit 1
	printf '%s\n' "$name"
)

# ---------------------------------------------------------------------------
# CHAP credentials
# ---------------------------------------------------------------------------
#
# Publishing serves each machine, next to the generic initramfs, a small
# uncompressed cpio that the boot loader appends; it holds one file,
# $OIB_CHAP_FILE (mode 0600), of exactly two lines:
#   username=<user>
#   password=<secret>
# both values 1..255 characters of A-Z a-z 0-9 . _ : @ -.  It is read, never
# sourced, and an error message never quotes a line or a value of it (a
# mistyped line may hold the password).

# oib_valid_chap_value VALUE: 1..255 characters of [A-Za-z0-9._:@-].
oib_valid_chap_value() (
	case "$1" in
	"" | *[!A-Za-z0-9._:@-]*) exit 1 ;;
	esac
	[ "${#1}" -le 255 ]
)

# oib_read_chap FILE: read and check the CHAP credentials file.  Sets
# OIB_CHAP_USER and OIB_CHAP_PASSWORD, or returns 1 with OIB_ERROR set to a
# message that names FILE, the line and the problem, never a value.
# Tracing is off while it runs: "set -x" would print every value.
oib_read_chap() {
	_oib_chap_trace=n
	case "$-" in
	*x*)
		_oib_chap_trace=y
		set +x
		;;
	esac
	_oib_read_chap "$1"
	_oib_chap_rc=$?
	[ "$_oib_chap_trace" = n ] || set -x
	return "$_oib_chap_rc"
}

_oib_read_chap() {
	OIB_CHAP_USER=
	OIB_CHAP_PASSWORD=
	OIB_ERROR=
	_oib_chap_syntax="expected exactly two lines, username=<user> and password=<secret>"
	if [ ! -f "$1" ] || [ ! -r "$1" ]; then
		OIB_ERROR="$1: not a readable file; $_oib_chap_syntax"
		return 1
	fi
	_oib_chap_cr=$(printf '\r')
	_oib_chap_n=0
	_oib_chap_user=
	_oib_chap_password=
	_oib_chap_line=
	while IFS= read -r _oib_chap_line || [ -n "$_oib_chap_line" ]; do
		_oib_chap_n=$((_oib_chap_n + 1))
		_oib_chap_where="$1: line $_oib_chap_n"
		case "$_oib_chap_line" in
		*"$_oib_chap_cr")
			OIB_ERROR="$_oib_chap_where ends in a carriage return (DOS line ends); $_oib_chap_syntax, each ending in a plain newline"
			break
			;;
		"")
			OIB_ERROR="$_oib_chap_where is empty; $_oib_chap_syntax"
			break
			;;
		username=*)
			_oib_chap_key=username
			[ -z "$_oib_chap_user" ] || _oib_chap_key=	# a second time
			;;
		password=*)
			_oib_chap_key=password
			[ -z "$_oib_chap_password" ] || _oib_chap_key=	# a second time
			;;
		*)
			OIB_ERROR="$_oib_chap_where is neither username= nor password=; $_oib_chap_syntax"
			break
			;;
		esac
		if [ -z "$_oib_chap_key" ]; then
			OIB_ERROR="$_oib_chap_where gives ${_oib_chap_line%%=*}= a second time; $_oib_chap_syntax"
			break
		fi
		_oib_chap_value=${_oib_chap_line#*=}
		if ! oib_valid_chap_value "$_oib_chap_value"; then
			if [ -z "$_oib_chap_value" ]; then
				_oib_chap_why="is empty"
			elif [ "${#_oib_chap_value}" -gt 255 ]; then
				_oib_chap_why="is longer than 255 characters"
			else
				_oib_chap_why="has characters other than A-Z a-z 0-9 . _ : @ -"
			fi
			OIB_ERROR="$_oib_chap_where: the $_oib_chap_key $_oib_chap_why"
			break
		fi
		case "$_oib_chap_key" in
		username) _oib_chap_user=$_oib_chap_value ;;
		password) _oib_chap_password=$_oib_chap_value ;;
		esac
		_oib_chap_line=
	done <"$1"
	if [ -n "$OIB_ERROR" ]; then
		:
	elif [ "$_oib_chap_n" -eq 0 ]; then
		OIB_ERROR="$1 is empty; $_oib_chap_syntax"
	elif [ -z "$_oib_chap_user" ]; then
		OIB_ERROR="$1 has no username= line; $_oib_chap_syntax"
	elif [ -z "$_oib_chap_password" ]; then
		OIB_ERROR="$1 has no password= line; $_oib_chap_syntax"
	else
		OIB_CHAP_USER=$_oib_chap_user
		OIB_CHAP_PASSWORD=$_oib_chap_password
	fi
	# the secret stays in OIB_CHAP_PASSWORD only
	_oib_chap_line=
	_oib_chap_value=
	_oib_chap_user=
	_oib_chap_password=
	[ -z "$OIB_ERROR" ]
}

# oib_node_set_chap TARGET PORTAL: put OIB_CHAP_USER and OIB_CHAP_PASSWORD
# into the node record of TARGET on PORTAL (authmethod CHAP).  iscsiadm
# takes values only as arguments; it never prints them.  No tracing here.
oib_node_set_chap() (
	set +x
	iscsiadm -m node -T "$1" -p "$2" -o update \
		-n node.session.auth.authmethod -v CHAP \
		-n node.session.auth.username -v "$OIB_CHAP_USER" \
		-n node.session.auth.password -v "$OIB_CHAP_PASSWORD"
)

# ---------------------------------------------------------------------------
# Settings (conf.d)
# ---------------------------------------------------------------------------

# oib_uint VALUE DEFAULT: VALUE when it is a plain non-negative integer,
# otherwise DEFAULT (a typo in conf.d must not make a wait unbounded).
oib_uint() (
	case "$1" in
	"" | *[!0-9]* | ??????????*) printf '%s\n' "$2" ;;
	*) printf '%s\n' "$(($1 + 0))" ;;
	esac
)

# oib_apply_defaults: fill in the settings that no conf.d file set.
oib_apply_defaults() {
	NETWORK_DEVICES=${NETWORK_DEVICES-}
	ISCSI_BOOT_WAIT_FIRST=$(oib_uint "${ISCSI_BOOT_WAIT_FIRST-}" 60)
	ISCSI_BOOT_WAIT_ALL=$(oib_uint "${ISCSI_BOOT_WAIT_ALL-}" 10)
	ISCSI_BOOT_NET_TIMEOUT=$(oib_uint "${ISCSI_BOOT_NET_TIMEOUT-}" 30)
	# a zero wait for the first path could never succeed
	[ "$ISCSI_BOOT_WAIT_FIRST" -gt 0 ] || ISCSI_BOOT_WAIT_FIRST=1
	[ "$ISCSI_BOOT_NET_TIMEOUT" -gt 0 ] || ISCSI_BOOT_NET_TIMEOUT=1
}

# ---------------------------------------------------------------------------
# Network devices and ip=
# ---------------------------------------------------------------------------

# oib_valid_ifname NAME: a plausible interface name (IFNAMSIZ is 16 with the
# terminating NUL; no "/" or blanks).
oib_valid_ifname() (
	case "$1" in
	"" | . | .. | ????????????????* | *[!A-Za-z0-9_.:@-]*) exit 1 ;;
	esac
	exit 0
)

# oib_is_ethernet DIR: DIR is a /sys/class/net/<dev> directory of a
# hardware Ethernet device.  type 1 is ARPHRD_ETHER; only hardware devices
# (PCI, virtio, USB...) have a "device" link, so bridges, bonds, VLANs, veth
# and tun/tap are left out; wireless devices (which would need an
# association first) are left out too.
oib_is_ethernet() (
	[ -r "$1/type" ] || exit 1
	type=
	read -r type <"$1/type" || [ -n "$type" ] || exit 1
	[ "$type" = 1 ] || exit 1
	[ -e "$1/device" ] || exit 1
	if [ -e "$1/wireless" ] || [ -e "$1/phy80211" ]; then
		exit 1
	fi
	exit 0
)

# oib_net_devices "$NETWORK_DEVICES": print the devices to bring up, one per
# line: the listed ones (in order, duplicates and invalid names dropped), or,
# when the list is empty, every hardware Ethernet device found under
# $OIB_SYSFS/class/net (in name order).
oib_net_devices() (
	seen=" "
	if [ -n "$1" ]; then
		set -f
		for dev in $1; do
			oib_valid_ifname "$dev" || continue
			case "$seen" in *" $dev "*) continue ;; esac
			seen="$seen$dev "
			printf '%s\n' "$dev"
		done
		exit 0
	fi
	set +f
	for dir in "$OIB_SYSFS"/class/net/*; do
		[ -e "$dir" ] || continue
		dev=${dir##*/}
		oib_valid_ifname "$dev" || continue
		oib_is_ethernet "$dir" && printf '%s\n' "$dev"
	done
	exit 0
)

# The ip= values of the command line, one per line, in order.  Set by the
# caller (normally from oib_cmdline_all ip); read by the functions below.
OIB_IP_PARAMS=${OIB_IP_PARAMS-}

# oib_ip_device SPEC: print the device field (the 6th, colon-separated) of
# an ip= value; empty for the short forms (dhcp, off...).
oib_ip_device() (
	IFS=:
	set -f
	# shellcheck disable=SC2086 # splitting on ":" is the point
	set -- $1
	[ "$#" -ge 6 ] && printf '%s\n' "$6"
	exit 0
)

# oib_ip_named_devices: print every device named by an ip= value.
oib_ip_named_devices() (
	while IFS= read -r spec; do
		dev=$(oib_ip_device "$spec")
		[ -n "$dev" ] && printf '%s\n' "$dev"
	done <<EOF
$OIB_IP_PARAMS
EOF
	exit 0
)

# oib_ip_plan DEV NDEVS: how to configure DEV, following the ip= syntax of
# initramfs-tools (nfsroot.txt: client:server:gw:netmask:hostname:device:
# autoconf:dns0:dns1:ntp0), extended to several devices.  NDEVS is the number
# of devices being configured.  Sets OIB_IP_PLAN to one of:
#   dhcp         configure DEV by DHCP (no ip=, or ip=dhcp/on/any/both/...)
#   none         leave DEV alone (ip=off or ip=none)
#   spec VALUE   hand VALUE to ipconfig (a long form naming DEV, e.g. static)
# Rules: the last ip= that names DEV in its device field wins; otherwise the
# last ip= without a device applies.  A long form with a client address but
# without a device is only accepted when a single device is configured
# (otherwise it would be ambiguous): with several devices it is an error
# (returns 1 with OIB_ERROR set).
oib_ip_plan() {
	OIB_ERROR=
	OIB_IP_PLAN=
	_oib_ipp_plandev=$1
	_oib_ipp_plan=dhcp
	_oib_ipp_devplan=
	while IFS= read -r _oib_ipp_ip; do
		[ -n "$_oib_ipp_ip" ] || continue
		_oib_ipp_ipdev=$(oib_ip_device "$_oib_ipp_ip")
		if [ -n "$_oib_ipp_ipdev" ]; then
			[ "$_oib_ipp_ipdev" = "$_oib_ipp_plandev" ] && _oib_ipp_devplan="spec $_oib_ipp_ip"
			continue
		fi
		case "$_oib_ipp_ip" in
		on | any | dhcp | bootp | both | rarp | all) _oib_ipp_plan=dhcp ;;
		none | off) _oib_ipp_plan=none ;;
		*:*)
			_oib_ipp_client=${_oib_ipp_ip%%:*}
			_oib_ipp_auto=$(
				IFS=:
				set -f
				# shellcheck disable=SC2086 # splitting on ":" is the point
				set -- $_oib_ipp_ip
				[ "$#" -ge 7 ] && printf '%s\n' "$7"
			)
			if [ -z "$_oib_ipp_client" ]; then
				# no address given: a protocol choice for all devices
				case "$_oib_ipp_auto" in
				off | none | static) _oib_ipp_plan=none ;;
				*) _oib_ipp_plan=dhcp ;;
				esac
			else
				_oib_ipp_plan="global $_oib_ipp_ip"
			fi
			;;
		*)
			OIB_ERROR="ip=$_oib_ipp_ip: not understood (expected dhcp, off or client:server:gw:netmask:hostname:device:autoconf)"
			return 1
			;;
		esac
	done <<EOF
$OIB_IP_PARAMS
EOF
	if [ -n "$_oib_ipp_devplan" ]; then
		OIB_IP_PLAN=$_oib_ipp_devplan
		return 0
	fi
	case "$_oib_ipp_plan" in
	global\ *)
		_oib_ipp_ip=${_oib_ipp_plan#global }
		if [ "$2" -ne 1 ]; then
			OIB_ERROR="ip=$_oib_ipp_ip names no device, but $2 devices are configured; add the device name as the 6th field (client:server:gw:netmask:hostname:DEVICE:none) or give one ip= per device"
			return 1
		fi
		# put DEV into the device field, keeping the fields after it
		_oib_ipp_ip=$(
			IFS=:
			set -f
			# shellcheck disable=SC2086 # splitting on ":" is the point
			set -- $_oib_ipp_ip
			while [ "$#" -lt 5 ]; do set -- "$@" ""; done
			head="$1:$2:$3:$4:$5:$_oib_ipp_plandev"
			if [ "$#" -gt 6 ]; then
				shift 6
				printf '%s:%s\n' "$head" "$*"
			else
				printf '%s\n' "$head"
			fi
		)
		OIB_IP_PLAN="spec $_oib_ipp_ip"
		;;
	*) OIB_IP_PLAN=$_oib_ipp_plan ;;
	esac
	return 0
}

# oib_netmask_prefix MASK: prefix length of a dotted netmask (for generated
# systemd-networkd files); returns 1 for a non-contiguous or invalid mask.
oib_netmask_prefix() (
	oib_valid_ipv4 "$1" || exit 1
	IFS=.
	set -f
	# shellcheck disable=SC2086 # splitting on "." is the point
	set -- $1
	prefix=0
	ended=0
	for octet in "$@"; do
		bit=128
		while [ "$bit" -ge 1 ]; do
			if [ $((octet & bit)) -ne 0 ]; then
				[ "$ended" -eq 0 ] || exit 1
				prefix=$((prefix + 1))
			else
				ended=1
			fi
			bit=$((bit / 2))
		done
	done
	echo "$prefix"
)

# oib_ipv4_in_subnet ADDR IFADDR NETMASK: true when the IPv4 address ADDR
# lies in the subnet IFADDR/NETMASK.  Compared octet by octet, so that no
# shell needs more than small integers (a busybox may be built with 32-bit
# arithmetic).  Also false when any of the three is malformed or the mask
# is not contiguous.
oib_ipv4_in_subnet() (
	oib_valid_ipv4 "$1" && oib_valid_ipv4 "$2" || exit 1
	oib_netmask_prefix "$3" >/dev/null || exit 1
	addr=$1.
	net=$2.
	mask=$3.
	while [ -n "$mask" ]; do
		a=${addr%%.*}
		n=${net%%.*}
		m=${mask%%.*}
		[ $((a & m)) -eq $((n & m)) ] || exit 1
		addr=${addr#*.}
		net=${net#*.}
		mask=${mask#*.}
	done
	exit 0
)

# oib_net_conf_value FILE KEY: the value of KEY in a net-<dev>.conf file of
# ipconfig (lines KEY='value'), read without sourcing the file.  Returns 1
# when KEY is not there.
oib_net_conf_value() (
	[ -r "$1" ] || exit 1
	found=1
	value=
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in
		"$2"=*)
			value=${line#*=}
			case "$value" in
			\'*\')
				value=${value#\'}
				value=${value%\'}
				;;
			esac
			found=0
			;;
		esac
	done <"$1"
	[ "$found" -eq 0 ] || exit 1
	printf '%s\n' "$value"
)

# oib_portal_netdev ADDR: the network device that reaches the portal
# address ADDR, worked out from the net-<dev>.conf files that ipconfig
# wrote in $OIB_NET_CONF_DIR (the initramfs carries no "ip route get"):
# the device whose IPv4 subnet holds ADDR, the longest prefix winning as in
# the kernel's routing table.  When no subnet holds it (a portal behind a
# gateway, an IPv6 portal), the only configured device if there is exactly
# one.  Returns 1 when that does not decide it (no device, or two devices
# on the same subnet).  Files without a valid DEVICE, IPV4ADDR and
# IPV4NETMASK are ignored.
oib_portal_netdev() (
	set +f	# callers may have globbing off
	best=
	best_prefix=-1
	tie=n
	seen=" "
	only=
	for conf in "$OIB_NET_CONF_DIR"/net-*.conf; do
		[ -f "$conf" ] || continue
		dev=$(oib_net_conf_value "$conf" DEVICE) || dev=
		if [ -z "$dev" ]; then
			dev=${conf##*/net-}
			dev=${dev%.conf}
		fi
		oib_valid_ifname "$dev" || continue
		ifaddr=$(oib_net_conf_value "$conf" IPV4ADDR) || continue
		mask=$(oib_net_conf_value "$conf" IPV4NETMASK) || continue
		[ "$ifaddr" != 0.0.0.0 ] || continue	# no address (yet)
		oib_valid_ipv4 "$ifaddr" || continue
		prefix=$(oib_netmask_prefix "$mask") || continue
		case "$seen" in *" $dev "*) ;; *) seen="$seen$dev " ;; esac
		only=$dev
		oib_ipv4_in_subnet "$1" "$ifaddr" "$mask" || continue
		if [ "$prefix" -gt "$best_prefix" ]; then
			best=$dev
			best_prefix=$prefix
			tie=n
		elif [ "$prefix" -eq "$best_prefix" ] && [ "$dev" != "$best" ]; then
			tie=y
		fi
	done
	if [ -n "$best" ]; then
		[ "$tie" = n ] || exit 1
		printf '%s\n' "$best"
		exit 0
	fi
	case "$seen" in
	" $only ") printf '%s\n' "$only" ;;
	*) exit 1 ;;
	esac
)

# ---------------------------------------------------------------------------
# iSCSI sessions, SCSI disks and dm-multipath maps in sysfs
# ---------------------------------------------------------------------------

# _oib_read FILE: print the first line of FILE (nothing if unreadable).
_oib_read() (
	line=
	[ -r "$1" ] || exit 1
	read -r line <"$1" || [ -n "$line" ] || exit 1
	printf '%s\n' "$line"
)

# oib_sessions_for_target IQN: print the numbers N of the iSCSI sessions
# (/sys/class/iscsi_session/sessionN) to target IQN.
oib_sessions_for_target() (
	set +f	# callers may have globbing off
	for dir in "$OIB_SYSFS"/class/iscsi_session/session*; do
		[ -d "$dir" ] || continue
		[ "$(_oib_read "$dir/targetname")" = "$1" ] || continue
		printf '%s\n' "${dir##*/session}"
	done
	exit 0
)

# oib_session_state N: LOGGED_IN, FAILED, FREE...
oib_session_state() {
	_oib_read "$OIB_SYSFS/class/iscsi_session/session$1/state"
}

# oib_session_portal N: the portal of session N as a.b.c.d:port or
# [v6]:port, from the session's first connection.
oib_session_portal() (
	conn="$OIB_SYSFS/class/iscsi_connection/connection$1:0"
	addr=$(_oib_read "$conn/persistent_address") ||
		addr=$(_oib_read "$conn/address") || exit 1
	port=$(_oib_read "$conn/persistent_port") ||
		port=$(_oib_read "$conn/port") || exit 1
	oib_format_portal "$addr" "$port"
)

# oib_session_disks N: the SCSI disks (sdX) reached through session N.
oib_session_disks() (
	set +f	# callers may have globbing off
	for dir in "$OIB_SYSFS"/class/iscsi_session/session"$1"/device/target*/*/block/*; do
		[ -e "$dir" ] || continue
		printf '%s\n' "${dir##*/}"
	done
	exit 0
)

# oib_disk_session sdX: the number of the iSCSI session a SCSI disk belongs
# to, found in the disk's sysfs path (.../sessionN/targetH:C:T/H:C:T:L/...).
oib_disk_session() (
	path=$(readlink -f "$OIB_SYSFS/block/$1") || exit 1
	IFS=/
	set -f
	# shellcheck disable=SC2086 # splitting on "/" is the point
	set -- $path
	for comp in "$@"; do
		case "$comp" in
		session[0-9]*)
			printf '%s\n' "${comp#session}"
			exit 0
			;;
		esac
	done
	exit 1
)

# oib_dm_uuid dm-N / oib_dm_name dm-N: the device-mapper uuid and name.
oib_dm_uuid() {
	_oib_read "$OIB_SYSFS/block/$1/dm/uuid"
}
oib_dm_name() {
	_oib_read "$OIB_SYSFS/block/$1/dm/name"
}

# oib_dm_slaves dm-N: the block devices under a dm device.
oib_dm_slaves() (
	set +f	# callers may have globbing off
	for dir in "$OIB_SYSFS/block/$1"/slaves/*; do
		[ -e "$dir" ] || continue
		printf '%s\n' "${dir##*/}"
	done
	exit 0
)

# oib_disk_map sdX: the dm-multipath map (dm-N) holding a path device.
oib_disk_map() (
	set +f	# callers may have globbing off
	for dir in "$OIB_SYSFS/block/$1"/holders/dm-*; do
		[ -e "$dir" ] || continue
		dm=${dir##*/}
		case "$(oib_dm_uuid "$dm")" in
		mpath-*)
			printf '%s\n' "$dm"
			exit 0
			;;
		esac
	done
	exit 1
)

# oib_map_of_dm dm-N: the multipath map of a dm device: the device itself
# when it is a map (uuid mpath-...), its parent when it is a kpartx
# partition of one (uuid partN-mpath-...).
oib_map_of_dm() (
	case "$(oib_dm_uuid "$1")" in
	mpath-*)
		printf '%s\n' "$1"
		exit 0
		;;
	part*-mpath-*)
		for slave in $(oib_dm_slaves "$1"); do
			case "$(oib_dm_uuid "$slave")" in
			mpath-*)
				printf '%s\n' "$slave"
				exit 0
				;;
			esac
		done
		;;
	esac
	exit 1
)

# oib_map_partitions dm-N: the kpartx partitions (dm devices) of a map.
oib_map_partitions() (
	set +f	# callers may have globbing off
	uuid=$(oib_dm_uuid "$1") || exit 0
	for dir in "$OIB_SYSFS"/block/dm-*; do
		[ -e "$dir" ] || continue
		case "$(oib_dm_uuid "${dir##*/}")" in
		part*-"$uuid") printf '%s\n' "${dir##*/}" ;;
		esac
	done
	exit 0
)

# oib_count_dm_paths WORD...: given the words of "dmsetup status" of a
# multipath map, print "<active> <total>" path counts.  Each path appears as
# its major:minor followed by A (active) or F (failed).
oib_count_dm_paths() (
	active=0
	total=0
	prev=
	for word in "$@"; do
		case "$prev" in
		[0-9]*:[0-9]*)
			case "$word" in
			A)
				active=$((active + 1))
				total=$((total + 1))
				;;
			F) total=$((total + 1)) ;;
			esac
			;;
		esac
		prev=$word
	done
	echo "$active $total"
)

# oib_dm_path_state MAJ:MIN WORD...: the state (A or F) of one path in the
# words of "dmsetup status" of a multipath map; returns 1 if not there.
oib_dm_path_state() (
	want=$1
	shift
	prev=
	for word in "$@"; do
		if [ "$prev" = "$want" ]; then
			case "$word" in
			A | F)
				printf '%s\n' "$word"
				exit 0
				;;
			esac
		fi
		prev=$word
	done
	exit 1
)

# oib_status_line DM-DEV EXPECTED DMSTATUS INITIATOR: the one-line summary
# printed on the console once the root is up and by iscsi-boot-status:
#   open-iscsi-boot: root /dev/dm-0 (mpatha) paths 2/2 active portals
#   192.0.2.1:3260,198.51.100.1:3260 initiator iqn....
# DM-DEV is the root (a map or a partition of one), EXPECTED the number of
# paths there should be ("" = as many as the map has), DMSTATUS the output
# of "dmsetup status" for the map, MISSING (optional) the portals without a
# session, appended as " missing a,b".
oib_status_line() (
	root=$1
	expected=$2
	dmstatus=$3
	initiator=$4
	missing=${5-}
	map=$(oib_map_of_dm "$root") || map=$root
	name=$(oib_dm_name "$map") || name=$map
	set -f
	# shellcheck disable=SC2086,SC2046 # split into words on purpose
	set -- $(oib_count_dm_paths $dmstatus)
	active=$1
	total=$2
	portals=
	for disk in $(oib_dm_slaves "$map"); do
		sid=$(oib_disk_session "$disk") || continue
		portal=$(oib_session_portal "$sid") || continue
		case ",$portals," in *",$portal,"*) continue ;; esac
		portals="${portals:+$portals,}$portal"
	done
	printf 'open-iscsi-boot: root /dev/%s (%s) paths %s/%s active portals %s initiator %s%s\n' \
		"$root" "$name" "$active" "${expected:-$total}" "${portals:-none}" \
		"${initiator:-unknown}" "${missing:+ missing $missing}"
)

# oib_route_dev WORD...: the device in the output of "ip -o route get ADDR"
# ("192.0.2.1 dev eth0 src 192.0.2.10 uid 0 cache").  For the booted system,
# which has iproute2; the initramfs uses oib_portal_netdev instead.
oib_route_dev() (
	prev=
	for word in "$@"; do
		if [ "$prev" = dev ]; then
			printf '%s\n' "$word"
			exit 0
		fi
		prev=$word
	done
	exit 1
)

# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------

# oib_quote STRING: print STRING as one single-quoted shell word, for the
# handover state file that the booted system sources.
oib_quote() (
	in=$1
	out=
	while :; do
		case "$in" in
		*\'*)
			out="$out${in%%\'*}'\\''"
			in=${in#*\'}
			;;
		*) break ;;
		esac
	done
	printf "'%s%s'\n" "$out" "$in"
)

# oib_uptime: whole seconds since boot (time_elapsed of initramfs-tools
# needs $starttime, which only init sets).
oib_uptime() (
	up=
	read -r up _ <"$OIB_PROC/uptime" || [ -n "$up" ] || { echo 0; exit 0; }
	echo "${up%%.*}"
)

# oib_last_line FILE: the last non-empty line of FILE (no tail in klibc).
oib_last_line() (
	last=
	[ -r "$1" ] || exit 0
	while IFS= read -r line || [ -n "$line" ]; do
		[ -n "$line" ] && last=$line
	done <"$1"
	printf '%s\n' "$last"
)
