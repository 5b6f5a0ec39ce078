"""Patient privacy: which DICOM fields identify a patient, pseudonyms, and a search for leaked values.

Policy (in the spirit of DICOM PS3.15 Annex E, "Basic Application Level Confidentiality Profile"):

- What leaves a DICOM file is decided by an **allow-list** (:data:`SAFE_DICOM_FIELDS`): acquisition
  parameters useful for research (modality, spacing, field strength, sequence timing ...). Everything else,
  including private tags, is dropped. :data:`PHI_TAGS` is the deny-list of identifying keywords (names, ids,
  birth date, addresses, dates and times, institution, UIDs, device serials ...); no keyword is in both lists,
  and it is used to collect the values that must never appear in any output (:func:`phi_values`).
- Free-text descriptors that we keep (``SeriesDescription``, ``ProtocolName`` ...) are "cleaned" as in the
  profile's Clean Descriptors Option: dropped when they contain any identifying value of the same file.
- Patient ids are written either as given (``patient_id_mode="keep"``) or as a salted HMAC-SHA256
  pseudonym (``"hash"``, :func:`pseudonymize`). The same salt gives the same pseudonym for the same patient
  across imports (needed for patient-level splits); the salt itself is a secret and is never written.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from spinenet.errors import ConfigError

PatientIdMode = Literal["keep", "hash"]
PATIENT_ID_MODES: tuple[str, ...] = ("keep", "hash")
SALT_ENV = "SPINENET_PHI_SALT"

# DICOM keywords that identify the patient, the visit or the device (PS3.15 Table E.1-1, the attributes
# that the basic profile removes, empties or replaces). UIDs are included: they link back to the PACS.
PHI_TAGS: frozenset[str] = frozenset(
    {
        # patient
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientInsurancePlanCodeSequence",
        "PatientReligiousPreference",
        "PatientComments",
        "PatientState",
        "PatientAge",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "Occupation",
        "MilitaryRank",
        "BranchOfService",
        "MedicalRecordLocator",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "CountryOfResidence",
        "RegionOfResidence",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        "AdditionalPatientHistory",
        "MedicalAlerts",
        "Allergies",
        "SmokingStatus",
        "PregnancyStatus",
        "LastMenstrualDate",
        # people
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "OperatorsName",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        # institution and device
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "DetectorID",
        "PlateID",
        "SoftwareVersions",
        # visit: dates and times
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "InstanceCreationDate",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "InstanceCreationTime",
        "AcquisitionDateTime",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "AdmittingDate",
        "AdmittingTime",
        # visit: ids and free text
        "AccessionNumber",
        "StudyID",
        "AdmissionID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PerformedProcedureStepDescription",
        "StudyDescription",
        "RequestAttributesSequence",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ImageComments",
        "AdmittingDiagnosesDescription",
        "DerivationDescription",
        # instance identifiers
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "MediaStorageSOPInstanceUID",
        "IrradiationEventUID",
        "StorageMediaFileSetUID",
    }
)

# Non-identifying acquisition fields that import may copy into manifests and import.json.
SAFE_DICOM_FIELDS: tuple[str, ...] = (
    "Modality",
    "SeriesDescription",
    "ProtocolName",
    "SeriesNumber",
    "BodyPartExamined",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "PixelBandwidth",
    "ReceiveCoilName",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
)

# Identifying in combination but not as searchable text (short codes and numbers that would match anywhere).
_NUMERIC_PHI = frozenset({"PatientAge", "PatientSex", "PatientSize", "PatientWeight", "SmokingStatus", "PregnancyStatus"})

# Free-text fields kept only when they contain no identifying value of the same file.
_FREE_TEXT_FIELDS = frozenset({"SeriesDescription", "ProtocolName", "SequenceName", "ReceiveCoilName"})

assert not PHI_TAGS & set(SAFE_DICOM_FIELDS), "a field cannot be both identifying and safe"


def check_patient_id_mode(mode: str) -> PatientIdMode:
    if mode not in PATIENT_ID_MODES:
        raise ConfigError(f"patient_id_mode: {mode!r} is not valid; choose one of {list(PATIENT_ID_MODES)}")
    return mode  # type: ignore[return-value]


def resolve_salt(salt: str | None) -> tuple[str, str]:
    """Return ``(salt, source)`` from the argument, else env ``SPINENET_PHI_SALT``.

    There is no built-in default on purpose: a public default salt would let anyone hash a list of
    candidate ids and reverse the pseudonyms, and a random one would give the same patient different
    pseudonyms in two imports (and so leak patients across train/test splits).
    """
    if salt:
        return salt, "argument"
    env = os.environ.get(SALT_ENV, "")
    if env:
        return env, f"env {SALT_ENV}"
    raise ConfigError(
        f"hashing patient ids needs a secret salt: set the environment variable {SALT_ENV} (preferred: it stays "
        "out of shell history) or pass --salt; keep the same salt to get the same pseudonyms in later imports, "
        "or use --keep-ids with --patient-id to write ids unhashed"
    )


def pseudonymize(patient_id: str, salt: str, *, length: int = 16) -> str:
    """Stable pseudonym ``"p" + first `length` hex digits of HMAC-SHA256(salt, patient_id)``.

    The ``p`` prefix keeps the id a string in CSV readers (an all-digit hex prefix would be parsed as a
    number and lose leading zeros). 16 hex digits (64 bits) make collisions negligible for any cohort.
    """
    if not salt:
        raise ConfigError("pseudonymize: the salt must not be empty")
    if not 8 <= length <= 64:
        raise ConfigError(f"pseudonymize: length must be within 8..64, got {length}")
    digest = hmac.new(salt.encode("utf-8"), str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return "p" + digest[:length]


def apply_patient_id_policy(patient_id: str, mode: str, salt: str | None) -> str:
    """The id to write: ``patient_id`` itself (mode ``keep``) or its pseudonym (mode ``hash``)."""
    if check_patient_id_mode(mode) == "keep":
        return str(patient_id)
    return pseudonymize(str(patient_id), resolve_salt(salt)[0])


def _json_value(value: Any) -> Any:
    """DICOM element value -> JSON-friendly python value (numbers stay numbers, multi-values lists)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSdecimal, DSfloat

    if isinstance(value, (MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (DSfloat, DSdecimal)):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def phi_values(ds: Any) -> list[str]:
    """The identifying text values present in ``ds`` (PHI_TAGS), with person names also split in parts.

    Used to clean free-text descriptors and, in tests, as the list of strings no output may contain.
    Values shorter than 3 characters (e.g. a sex "F") are left out: they cannot be searched meaningfully.
    """
    found: set[str] = set()
    for keyword in PHI_TAGS - _NUMERIC_PHI:
        value = getattr(ds, keyword, None)
        if value is None or keyword.endswith("Sequence"):
            continue
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            found.add(text)
            if "^" in text:  # person name: family^given^middle^prefix^suffix
                found.update(part.strip() for part in text.split("^") if part.strip())
    return sorted(v for v in found if len(v) >= 3)


def safe_dicom_metadata(ds: Any) -> dict[str, Any]:
    """Only the allow-listed, non-identifying acquisition fields of ``ds`` as JSON-friendly values.

    Free-text fields (``SeriesDescription`` ...) are dropped when they contain an identifying value of the
    same dataset (sites sometimes type a patient's name into the description).
    """
    phi = [v.lower() for v in phi_values(ds)]
    out: dict[str, Any] = {}
    for keyword in SAFE_DICOM_FIELDS:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            continue
        value = _json_value(value)
        if keyword in _FREE_TEXT_FIELDS and any(p in str(value).lower() for p in phi):
            continue
        out[keyword] = value
    return out


def expand_phi_variants(value: str) -> list[str]:
    """Spellings under which a DICOM value may be written elsewhere: names with ``^`` as spaces or commas,
    ``YYYYMMDD`` dates as ISO / slashed / dotted dates."""
    variants = {value}
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        variants.update({" ".join(parts), ", ".join(parts), ",".join(parts), " ".join(reversed(parts))})
    if re.fullmatch(r"(19|20)\d{6}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        variants.update({f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    return sorted(variants)


def _png_text_chunks(data: bytes) -> Iterable[bytes]:
    """Decompressed payloads of a PNG's compressed text chunks (zTXt, compressed iTXt); raw search
    already covers tEXt and uncompressed iTXt."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        try:
            if ctype == b"zTXt":
                keyword, _, rest = body.partition(b"\0")
                yield keyword + b"\0" + zlib.decompress(rest[1:])
            elif ctype == b"iTXt":
                keyword, _, rest = body.partition(b"\0")
                if rest[:1] == b"\1":  # compression flag set
                    # rest = flag, method, language\0, translated keyword\0, compressed text
                    _, _, tail = rest[2:].partition(b"\0")
                    _, _, text = tail.partition(b"\0")
                    yield keyword + b"\0" + zlib.decompress(text)
        except zlib.error:
            continue
        if ctype == b"IEND":
            break


def _decoded_payloads(path: Path, data: bytes) -> Iterable[bytes]:
    """The raw bytes plus whatever a compressed container holds (gzip, zip incl. torch checkpoints, PNG text)."""
    yield data
    if data[:2] == b"\x1f\x8b":
        import gzip

        try:
            yield gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            pass
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        yield from _png_text_chunks(data)
    if data[:2] == b"PK" and zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    yield info.filename.encode("utf-8", "replace")
                    if info.compress_type != zipfile.ZIP_STORED:  # stored members are already in `data`
                        yield zf.read(info)
        except (zipfile.BadZipFile, OSError, zlib.error):
            pass


def _iter_files(paths_or_dir: str | Path | Iterable[str | Path]) -> list[tuple[Path, str]]:
    """``(file, name to search)``; the name is relative to the scanned folder so that the folder's own
    location (e.g. a home directory) is not reported."""
    roots = [paths_or_dir] if isinstance(paths_or_dir, (str, Path)) else list(paths_or_dir)
    files: list[tuple[Path, str]] = []
    for root in map(Path, roots):
        if root.is_dir():
            files.extend((p, str(p.relative_to(root))) for p in sorted(root.rglob("*")) if p.is_file())
        elif root.is_file():
            files.append((root, root.name))
    return files


def scan_for_phi(paths_or_dir: str | Path | Iterable[str | Path], values: Iterable[str]) -> list[tuple[Path, str]]:
    """Every ``(file, value)`` where an identifying ``value`` occurs in a file under ``paths_or_dir``.

    Searches file names (relative to a given folder) and contents, text and binary alike (CSV, JSON, YAML, logs, PNG incl. compressed
    text chunks, gzip, zip / torch checkpoints), case-insensitively, as UTF-8 and UTF-16 and under the
    usual re-spellings of names and dates (:func:`expand_phi_variants`). ``value`` in the result is the
    value as given, not the variant found. Values shorter than 3 characters are refused: in binary data
    they would match by chance.
    """
    values = [str(v) for v in values]
    short = [v for v in values if len(v.strip()) < 3]
    if short:
        raise ValueError(f"scan_for_phi: values shorter than 3 characters cannot be searched reliably: {short}")
    needles: list[tuple[str, list[bytes]]] = []
    for value in values:
        encoded: list[bytes] = []
        for variant in expand_phi_variants(value):
            low = variant.lower()
            encoded += [low.encode("utf-8"), low.encode("utf-16-le")]
        needles.append((value, encoded))
    hits: list[tuple[Path, str]] = []
    for path, name in _iter_files(paths_or_dir):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        haystacks = [name.lower().encode("utf-8")]
        haystacks += [h.lower() for h in _decoded_payloads(path, data)]
        for value, encoded in needles:
            if any(n in h for h in haystacks for n in encoded):
                hits.append((path, value))
    return hits
